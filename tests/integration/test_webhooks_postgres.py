"""The webhook outbox on real PostgreSQL 15: rows written with the transitions, claims that skip locked rows
instead of waiting, and four concurrent senders delivering every row exactly once, in order per job, to a real
local HTTP receiver."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from dwf_client.webhooks import verify_signature
from dwf_service import jobs, webhooks
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.migrate import upgrade_db
from dwf_service.models import DEFAULT_TENANT_ID, Tenant, WebhookDelivery
from dwf_service.settings import Settings
from tests.webhook_receiver import running_receiver

REQUEST = {"model": {"name": "lenet_300_100"}, "dataset": {"file_id": "file-x"}, "method": {"epochs": 1}}
SECRET = "whsec_pg-secret-0123456789ab"


@pytest.fixture
def pg(tmp_path: Path, own_database: str) -> Iterator[ServiceContext]:
    """A context on a database of this test's own on the session's PostgreSQL (others expect theirs empty)."""
    settings = Settings(data_dir=tmp_path, database_url=own_database, reconcile_seconds=0, webhook_base_delay_seconds=0)
    upgrade_db(settings.database_url)
    ctx = ServiceContext.create(settings, publisher=lambda *_args: None, use_celery=False)
    try:
        yield ctx
    finally:
        ctx.engine.dispose()


def _tenant_webhook(ctx: ServiceContext, url: str) -> None:
    with session_scope(ctx.sessions) as session:
        tenant = session.get(Tenant, DEFAULT_TENANT_ID)
        assert tenant is not None
        tenant.webhook_url, tenant.webhook_secret = url, SECRET


def _job_with_three_changes(ctx: ServiceContext) -> str:
    """validating_files → queued → cancelled: three deliveries."""
    with session_scope(ctx.sessions) as session:
        job_id = jobs.create_job(session, REQUEST, file_ids={"dataset": "file-x"}).id
    with session_scope(ctx.sessions) as session:
        assert jobs.acquire_lease(session, job_id, "w", (jobs.VALIDATING,), 60, 3)
        assert jobs.mark_validated(session, job_id, "w", "ok")
    with session_scope(ctx.sessions) as session:
        jobs.request_cancel(session, job_id)
    return job_id


def test_claims_skip_locked_rows_and_keep_a_jobs_order(pg: ServiceContext) -> None:
    _tenant_webhook(pg, "https://example.com/hook")
    locked_job, free_job = _job_with_three_changes(pg), _job_with_three_changes(pg)
    with pg.sessions() as holder:
        first = holder.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == locked_job)
            .order_by(WebhookDelivery.id)
            .limit(1)
            .with_for_update()
        ).one()
        result: list[list[webhooks.Claim]] = []
        claimer = threading.Thread(target=lambda: result.append(webhooks.claim_due(pg.sessions, pg.settings)))
        claimer.start()
        claimer.join(timeout=10)
        assert not claimer.is_alive(), "claim_due waited for a locked row instead of skipping it"
        first_id = first.id
        holder.rollback()
    (claims,) = result
    # The locked row is skipped, and its job's later rows wait behind it; the other job's first row is claimed.
    assert [(c.job_id, c.event) for c in claims] == [(free_job, "job.validating_files")]
    with pg.sessions() as session:
        skipped = session.get(WebhookDelivery, first_id)
        assert skipped is not None and (skipped.status, skipped.attempts) == ("pending", 0)
    # Unlocked, it is claimed next (the free job's second row waits for its first, claimed and not yet recorded).
    assert [(c.id, c.attempts) for c in webhooks.claim_due(pg.sessions, pg.settings)] == [(first_id, 1)]


def test_concurrent_senders_deliver_each_row_once_in_order_per_job(pg: ServiceContext) -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    deliveries: list[str] = []
    lock = threading.Lock()

    def answer(call: object) -> int:
        from tests.webhook_receiver import Call

        assert isinstance(call, Call)
        verify_signature(call.body, call.headers["x-dwf-signature"], SECRET)
        with lock:
            seen[call.event["data"]["id"]].append(call.event["type"])
            deliveries.append(call.headers["x-dwf-delivery"])
        return 200

    with running_receiver(answer) as receiver:
        _tenant_webhook(pg, receiver.url)
        job_ids = [_job_with_three_changes(pg) for _ in range(12)]
        errors: list[BaseException] = []

        def sender() -> None:
            try:
                with httpx.Client(timeout=5) as http:
                    while webhooks.deliver_due(pg.sessions, pg.settings, http):
                        pass
            except BaseException as exc:
                errors.append(exc)

        for _round in range(4):  # a job's next row is due only after its previous one was delivered
            threads = [threading.Thread(target=sender) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        assert errors == []
    with pg.sessions() as session:
        rows = list(session.scalars(select(WebhookDelivery)))
    assert len(rows) == 36 and all((r.status, r.attempts) == ("delivered", 1) for r in rows)
    assert sorted(deliveries) == sorted(f"whd-{r.id}" for r in rows)  # every row exactly once
    assert {job_id: seen[job_id] for job_id in job_ids} == {
        job_id: ["job.validating_files", "job.queued", "job.cancelled"] for job_id in job_ids
    }
