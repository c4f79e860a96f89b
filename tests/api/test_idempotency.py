"""api/idempotency.py: the claim the first request of an Idempotency-Key holds while in flight (SQLite side: the
threads of one process and other processes; the PostgreSQL side runs in tests/api/test_concurrency.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from api.errors import ApiError
from api.idempotency import claim_id, registry_for
from dwf_service.context import ServiceContext
from tests.api.test_jobs import body

ROOT = Path(__file__).resolve().parents[2]
HOLDER = textwrap.dedent(
    """
    import sys
    from api.idempotency import registry_for
    with registry_for(sys.argv[1]).claim(int(sys.argv[2])):
        print("held", flush=True)
        sys.stdin.read()
    """
)


def _in_use(error: ApiError) -> bool:
    return (error.status, error.code, error.param, error.headers) == (
        409,
        "idempotency_key_in_use",
        "Idempotency-Key",
        {"Retry-After": "1"},
    )


def test_claim_id_is_a_signed_64_bit_name_of_tenant_and_key() -> None:
    ident = claim_id("tenant-1", "key")
    assert ident == claim_id("tenant-1", "key") and -(2**63) <= ident < 2**63
    names = {ident, claim_id("tenant-2", "key"), claim_id("tenant-1", "key2"), claim_id("tenant-1k", "ey")}
    assert len(names) == 4


def test_a_claim_is_one_holder_at_a_time_across_threads_and_processes(tmp_path: Path) -> None:
    """Another process (``uvicorn --workers N`` on one SQLite file) holding a claim makes it 409 here, until that
    process ends, even by kill -9; the same claim twice in this process is 409 too; other claims are free."""
    database = str(tmp_path / "dwf.db")
    registry = registry_for(database)
    held = claim_id("tenant-1", "key")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database, str(held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(ApiError) as info, registry.claim(held):
            pass
        assert _in_use(info.value)
        mine = claim_id("tenant-1", "another key")
        with registry.claim(mine):
            with pytest.raises(ApiError) as info, registry.claim(mine):
                pass
            assert _in_use(info.value)
        assert registry.lock_path == Path(database + ".idempotency-lock")
    finally:
        holder.kill()
        holder.wait()
    with registry.claim(held):  # the kernel dropped the dead process's lock
        pass
    with registry.claim(held):  # and this process's own release freed it again
        pass


def test_the_sqlite_claim_is_held_through_the_commit(
    ctx: ServiceContext,
    client: TestClient,
    files: dict[str, Any],
) -> None:
    """Taken before the request's session and freed after its commit, before the response is sent: a repeat that
    has the response in hand is never 409."""
    registry = registry_for(ctx.engine.url.database)
    at_commit: list[int] = []

    @event.listens_for(ctx.sessions, "after_commit")
    def _record(_session: Session) -> None:
        at_commit.append(len(registry._held))

    headers = {"Idempotency-Key": "through-the-commit"}
    first = client.post("/v1/jobs", json=body(files), headers=headers)
    assert first.status_code == 200 and at_commit == [1] and not registry._held
    again = client.post("/v1/jobs", json=body(files), headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert not registry._held
