"""Concurrent job submits of one tenant, on SQLite and on a real PostgreSQL: the active-jobs quota holds exactly.

The PostgreSQL case uses the integration tier's server (skipped locally without PostgreSQL 15, required on CI).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from api.app import create_app
from dwf_service import jobs, quotas
from dwf_service.auth import add_key
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job, Tenant
from dwf_service.queue import Message
from tests.api.test_files import ONNX_HEAD, npz_bytes, upload
from tests.api.test_jobs import body
from tests.integration.conftest import postgres_url  # noqa: F401 (a fixture, requested by name below)
from tests.service_helpers import make_context, make_settings

THREADS = 6
QUOTA = 2


@dataclass
class Tenancy:
    """One fresh tenant with a key, its client, uploaded files and the messages sent to the broker."""

    ctx: ServiceContext
    client: TestClient
    tenant_id: str
    files: dict[str, Any]
    published: list[Message]

    def jobs(self) -> int:
        with self.ctx.sessions() as session:
            return int(
                session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == self.tenant_id)) or 0
            )


@pytest.fixture(params=["sqlite", "postgresql"])
def tenancy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tenancy]:
    """A tenant of its own (the PostgreSQL database is shared by the session's tests), quota ``QUOTA`` jobs."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    published: list[Message] = []
    ctx = make_context(make_settings(tmp_path / "data", database_url=url, max_upload_bytes=2**20), published)
    key = f"dwf_race-{uuid.uuid4().hex}"
    with session_scope(ctx.sessions) as session:
        tenant_id = add_key(session, key, tenant=f"race-{uuid.uuid4().hex[:12]}").tenant_id
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(max_active_jobs=QUOTA))
    app = create_app(ctx.settings, context=ctx, reconciler=False)
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
            files = {
                "model": upload(client, ONNX_HEAD, "m.onnx", "model")["id"],
                "dataset": upload(client, npz_bytes(4), "d.npz", "dataset")["id"],
            }
            yield Tenancy(ctx, client, tenant_id, files, published)
    finally:
        ctx.engine.dispose()


def _slow_count(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.3) -> None:
    """Widen the window between counting the active jobs and inserting one, so unlocked submits would overlap."""
    count = quotas.active_jobs

    def slow(session: Any, tenant_id: str) -> int:
        n = count(session, tenant_id)
        threading.Event().wait(seconds)
        return n

    monkeypatch.setattr(quotas, "active_jobs", slow)


def test_concurrent_submits_take_exactly_the_quota(tenancy: Tenancy, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_count(monkeypatch)
    start = threading.Barrier(THREADS)

    def submit(_: int) -> Any:
        start.wait()
        return tenancy.client.post("/v1/jobs", json=body(tenancy.files))

    with ThreadPoolExecutor(THREADS) as pool:
        responses = list(pool.map(submit, range(THREADS)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * QUOTA + [429] * (THREADS - QUOTA), [r.text for r in responses]
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {"active_jobs_quota_exceeded"}
    assert tenancy.jobs() == QUOTA
    assert sorted(m.job_id for m in tenancy.published) == sorted(r.json()["id"] for r in responses if r.is_success)
    assert all(r.json()["status"] == jobs.VALIDATING for r in responses if r.is_success)


def test_a_concurrent_repeat_of_a_key_waits_for_the_first_and_replays_it(
    tenancy: Tenancy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repeat creates nothing: it waits until the first request committed, then answers the first's job."""
    with session_scope(tenancy.ctx.sessions) as session:  # no quota: the submits take turns all the same
        session.execute(update(Tenant).where(Tenant.id == tenancy.tenant_id).values(max_active_jobs=0))
    create = jobs.create_job
    calls: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def held_open(*args: Any, **kwargs: Any) -> Job:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:  # the first request stops here, before its insert, its transaction still open
            inside.set()
            assert release.wait(30)
        return create(*args, **kwargs)

    monkeypatch.setattr(jobs, "create_job", held_open)
    headers = {"Idempotency-Key": "overlap"}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(tenancy.client.post, "/v1/jobs", json=body(tenancy.files), headers=headers)
        assert inside.wait(30)
        repeat = pool.submit(tenancy.client.post, "/v1/jobs", json=body(tenancy.files), headers=headers)
        threading.Event().wait(0.5)
        assert not repeat.done()  # waiting for the first request's commit
        release.set()
        answers = [first.result(timeout=60), repeat.result(timeout=60)]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()
    assert len(calls) == 1 and tenancy.jobs() == 1  # the repeat did no work of its own
    assert [m.job_id for m in tenancy.published] == [answers[0].json()["id"]]
    # After the commit a repeat is a plain replay; another body with the key is a conflict.
    assert tenancy.client.post("/v1/jobs", json=body(tenancy.files), headers=headers).json() == answers[0].json()
    other = tenancy.client.post("/v1/jobs", json=body(tenancy.files, epochs=3), headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"


def test_twenty_concurrent_posts_with_one_key_make_one_job(tenancy: Tenancy) -> None:
    """The fault tier's T10 in process: every answer is 200 with the one job, whichever request got in first."""
    start = threading.Barrier(20)

    def submit(_: int) -> Any:
        start.wait()
        return tenancy.client.post("/v1/jobs", json=body(tenancy.files), headers={"Idempotency-Key": "t10"})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    assert len({a.json()["id"] for a in answers}) == 1 and tenancy.jobs() == 1 and len(tenancy.published) == 1
