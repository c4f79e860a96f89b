"""Concurrent job submits of one tenant, on SQLite and on a real PostgreSQL: the active-jobs quota holds exactly, and
a repeat of an Idempotency-Key while its first request is in flight is 409 idempotency_key_in_use, then the replay.

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


def _hold_first_create(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Stop the first request inside its create (before the insert, its transaction and key claim held) until
    ``release`` is set; returns (inside, release). Later creates pass straight through."""
    create = jobs.create_job
    calls: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def held_open(*args: Any, **kwargs: Any) -> Job:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            inside.set()
            assert release.wait(30)
        return create(*args, **kwargs)

    monkeypatch.setattr(jobs, "create_job", held_open)
    return inside, release


def _in_use(response: Any) -> bool:
    """A 409 idempotency_key_in_use with the envelope's param and Retry-After: 1."""
    if response.status_code != 409:
        return False
    error = response.json()["error"]
    return (
        error["code"] == "idempotency_key_in_use"
        and error["type"] == "conflict_error"
        and error["param"] == "Idempotency-Key"
        and "retry" in error["message"]
        and response.headers.get("retry-after") == "1"
    )


def test_a_repeat_while_the_first_is_in_flight_gets_409_then_the_replay(
    tenancy: Tenancy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the first request has not committed, a repeat of its key is 409 idempotency_key_in_use at once;
    after the commit the repeat answers the first's job. Another key is not held up by the claim."""
    with session_scope(tenancy.ctx.sessions) as session:
        session.execute(update(Tenant).where(Tenant.id == tenancy.tenant_id).values(max_active_jobs=0))
    inside, release = _hold_first_create(monkeypatch)
    headers = {"Idempotency-Key": "overlap"}
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(tenancy.client.post, "/v1/jobs", json=body(tenancy.files), headers=headers)
        assert inside.wait(30)
        repeat = tenancy.client.post("/v1/jobs", json=body(tenancy.files), headers=headers)
        assert _in_use(repeat), (repeat.status_code, repeat.text, dict(repeat.headers))
        # Another body with the key in flight is also "in use": the first has not stored its body yet.
        assert _in_use(tenancy.client.post("/v1/jobs", json=body(tenancy.files, epochs=3), headers=headers))
        other_key = pool.submit(
            tenancy.client.post, "/v1/jobs", json=body(tenancy.files), headers={"Idempotency-Key": "another"}
        )
        assert not first.done()
        release.set()
        answer, other = first.result(timeout=60), other_key.result(timeout=60)
    assert answer.status_code == 200 and other.status_code == 200, (answer.text, other.text)
    assert other.json()["id"] != answer.json()["id"]
    # After the commit a repeat is the replay (200, the same job, nothing new); another body is a conflict.
    again = tenancy.client.post("/v1/jobs", json=body(tenancy.files), headers=headers)
    assert again.status_code == 200 and again.json() == answer.json()
    assert tenancy.jobs() == 2
    assert sorted(m.job_id for m in tenancy.published) == sorted([answer.json()["id"], other.json()["id"]])
    reused = tenancy.client.post("/v1/jobs", json=body(tenancy.files, epochs=3), headers=headers)
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"
    # A request that failed (here: an unknown file) frees its key for the next one.
    bad = {**body(tenancy.files), "dataset": {"file_id": "file-missing"}}
    assert tenancy.client.post("/v1/jobs", json=bad, headers={"Idempotency-Key": "k2"}).status_code == 404
    assert tenancy.client.post("/v1/jobs", json=body(tenancy.files), headers={"Idempotency-Key": "k2"}).is_success


def test_twenty_concurrent_posts_with_one_key_make_one_job(tenancy: Tenancy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault tier's T10 in process: the request that got in holds its create open until the other 19 have
    answered; they are 409 idempotency_key_in_use, and each one sent again after the commit is the one job."""
    with session_scope(tenancy.ctx.sessions) as session:
        session.execute(update(Tenant).where(Tenant.id == tenancy.tenant_id).values(max_active_jobs=0))
    inside, release = _hold_first_create(monkeypatch)
    start = threading.Barrier(20)
    answered = threading.Semaphore(0)
    headers = {"Idempotency-Key": "t10"}

    def submit(_: int) -> Any:
        start.wait()
        response = tenancy.client.post("/v1/jobs", json=body(tenancy.files), headers=headers)
        answered.release()
        return response

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(submit, i) for i in range(20)]
        assert inside.wait(30)
        arrived = sum(answered.acquire(timeout=10) for _ in range(19))  # the 19 others, while the first is held
        release.set()
        answers = [f.result(timeout=60) for f in futures]
    assert arrived == 19
    ok = [a for a in answers if a.status_code == 200]
    assert len(ok) == 1 and all(_in_use(a) for a in answers if a.status_code != 200), [a.text for a in answers]
    retried = [tenancy.client.post("/v1/jobs", json=body(tenancy.files), headers=headers) for _ in range(19)]
    assert {(r.status_code, r.json()["id"]) for r in retried} == {(200, ok[0].json()["id"])}
    assert tenancy.jobs() == 1 and len(tenancy.published) == 1
