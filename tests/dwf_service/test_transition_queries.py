"""The SQL a terminal transition costs, pinned: one SELECT before the guarded update (the status it leaves and the
tenant's webhook URL) and the UPDATE … RETURNING itself, then the event and webhook rows; the sweep's finalize
message comes from the update's own row. Real SQLite here; tests/integration/test_transition_queries_postgres.py
runs the same checks on PostgreSQL 15."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from dwf_service import jobs, sweeps
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import DEFAULT_TENANT_ID, Tenant, WebhookDelivery
from dwf_service.queue import TASK_FINALIZE_SWEEP, Message
from tests.sql_statements import recorded_statements, verbs

REQUEST = {"model": {"name": "lenet_300_100"}, "dataset": {"file_id": "file-x"}, "method": {"depth": 3, "epochs": 2}}
HOOK = "https://example.com/hook"
METRICS = {"test_accuracy": 0.97, "sparsity": 0.9, "layers": [{"name": "fc1"}]}
# A job that ends: the status it leaves + the tenant's URL, the guarded UPDATE … RETURNING, then its two rows.
# (Before: SELECT status, UPDATE, SELECT sweep_id, SELECT the webhook's row: two SELECTs more.)
END = ["SELECT jobs", "UPDATE jobs", "INSERT job_events", "INSERT webhook_deliveries"]


def set_tenant_webhook(ctx: ServiceContext) -> None:
    with session_scope(ctx.sessions) as session:
        tenant = session.get(Tenant, DEFAULT_TENANT_ID)
        assert tenant is not None
        tenant.webhook_url, tenant.webhook_secret = HOOK, "whsec_0123456789abcdefghij"


def running_jobs(ctx: ServiceContext, *, in_sweep: bool, n: int = 1) -> tuple[str | None, list[str]]:
    """``n`` jobs running under the lease of "w" (the children of one sweep when ``in_sweep``): (sweep id, job ids)."""
    with session_scope(ctx.sessions) as session:
        if in_sweep:
            sweep = sweeps.create_sweep(session, {"grid": {}}, [REQUEST] * n, file_ids={}, tenant_id=DEFAULT_TENANT_ID)
            sweep_id: str | None = sweep.id
            job_ids = [job.id for job in sweeps.children_of(session, sweep.id)]
        else:
            sweep_id, job_ids = None, [jobs.create_job(session, REQUEST, file_ids={}).id for _ in range(n)]
    for job_id in job_ids:
        with session_scope(ctx.sessions) as session:
            assert jobs.acquire_lease(session, job_id, "w", (jobs.VALIDATING,), 60, 3)
            assert jobs.mark_validated(session, job_id, "w", "ok")
            assert jobs.acquire_lease(session, job_id, "w", (jobs.QUEUED,), 60, 3)
            assert jobs.start_running(session, job_id, "w")
    return sweep_id, job_ids


def last_payload(ctx: ServiceContext, job_id: str) -> dict[str, Any]:
    with ctx.sessions() as session:
        query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.id.desc())
        delivery = session.scalars(query).first()
        assert delivery is not None and delivery.url == HOOK
        return delivery.payload


def finish_statements(ctx: ServiceContext, job_id: str, status: str = jobs.SUCCEEDED, **kwargs: Any) -> list[str]:
    with recorded_statements(ctx.engine) as statements, session_scope(ctx.sessions) as session:
        assert jobs.finish(session, job_id, status, owner="w", **kwargs)
    return verbs(statements)


def check_a_job_not_in_a_sweep(ctx: ServiceContext, published: list[Message]) -> None:
    set_tenant_webhook(ctx)
    _, (job_id,) = running_jobs(ctx, in_sweep=False)
    published.clear()
    assert finish_statements(ctx, job_id, metrics=METRICS, progress=1.0) == END
    assert published == []  # no sweep, no finalize message
    data = last_payload(ctx, job_id)["data"]
    assert data["status"] == "succeeded" and data["previous_status"] == "running" and data["sweep_id"] is None
    assert data["attempts"] == 1 and data["metrics"] == {"test_accuracy": 0.97, "sparsity": 0.9}


def check_a_sweep_child(ctx: ServiceContext, published: list[Message]) -> None:
    set_tenant_webhook(ctx)
    sweep_id, (first, second) = running_jobs(ctx, in_sweep=True, n=2)
    assert sweep_id is not None
    published.clear()
    error = {"code": "training_diverged", "message": "loss is NaN", "param": None}
    assert finish_statements(ctx, first, jobs.FAILED, error=error) == END
    assert published == [Message(TASK_FINALIZE_SWEEP, sweep_id)]  # after the commit, once
    data = last_payload(ctx, first)["data"]
    assert data["status"] == "failed" and data["previous_status"] == "running" and data["sweep_id"] == sweep_id
    assert data["error"] == error
    published.clear()
    assert finish_statements(ctx, second, metrics=METRICS) == END
    assert published == [Message(TASK_FINALIZE_SWEEP, sweep_id)]
    assert last_payload(ctx, second)["data"]["sweep_id"] == sweep_id


def check_a_lost_guard_ends_nothing(ctx: ServiceContext, published: list[Message]) -> None:
    set_tenant_webhook(ctx)
    _, (job_id,) = running_jobs(ctx, in_sweep=True)
    before = last_payload(ctx, job_id)
    published.clear()
    with recorded_statements(ctx.engine) as statements, session_scope(ctx.sessions) as session:
        assert not jobs.finish(session, job_id, jobs.SUCCEEDED, owner="someone-else")
    assert verbs(statements) == ["SELECT jobs", "UPDATE jobs"]
    assert published == [] and last_payload(ctx, job_id) == before  # no finalize message, no delivery
    with ctx.sessions() as session:
        job = session.get(jobs.Job, job_id)
        assert job is not None and job.status == jobs.RUNNING and job.lease_owner == "w"


def check_settle_reads_once(ctx: ServiceContext, published: list[Message]) -> None:
    """settle's own SELECT of the row carries what the end needs: no second one."""
    set_tenant_webhook(ctx)
    sweep_id, (job_id,) = running_jobs(ctx, in_sweep=True)
    with session_scope(ctx.sessions) as session:
        assert jobs.requeue(session, job_id, "w", "worker shut down", count_attempt=True)
    published.clear()
    with recorded_statements(ctx.engine) as statements, session_scope(ctx.sessions) as session:
        assert jobs.settle(session, job_id, max_attempts=1)  # its one attempt was used
    assert verbs(statements) == END
    assert published == [Message(TASK_FINALIZE_SWEEP, sweep_id or "")]
    data = last_payload(ctx, job_id)["data"]
    assert data["status"] == "failed" and data["previous_status"] == "queued"
    assert data["error"]["code"] == "too_many_attempts"


def check_cancelling_an_unstarted_child(ctx: ServiceContext, published: list[Message]) -> None:
    set_tenant_webhook(ctx)
    with session_scope(ctx.sessions) as session:
        sweep = sweeps.create_sweep(session, {"grid": {}}, [REQUEST], file_ids={}, tenant_id=DEFAULT_TENANT_ID)
        (child,) = (job.id for job in sweeps.children_of(session, sweep.id))
    published.clear()
    with recorded_statements(ctx.engine) as statements, session_scope(ctx.sessions) as session:
        jobs.request_cancel(session, child)
    # The cancel flag, then the end as above.
    assert verbs(statements) == ["UPDATE jobs", *END]
    assert published == [Message(TASK_FINALIZE_SWEEP, sweep.id)]
    data = last_payload(ctx, child)["data"]
    assert data["status"] == "cancelled" and data["previous_status"] == "validating_files"


def check_start_running_reads_once(ctx: ServiceContext, published: list[Message]) -> None:
    """queued → running: one SELECT (status, started_at, the tenant's URL), the UPDATE … RETURNING, the delivery; a
    re-delivered start of a running job keeps started_at and queues no second delivery."""
    set_tenant_webhook(ctx)
    with session_scope(ctx.sessions) as session:
        job_id = jobs.create_job(session, REQUEST, file_ids={}).id
        assert jobs.acquire_lease(session, job_id, "w", (jobs.VALIDATING,), 60, 3)
        assert jobs.mark_validated(session, job_id, "w", "ok")
        assert jobs.acquire_lease(session, job_id, "w", (jobs.QUEUED,), 60, 3)
    with recorded_statements(ctx.engine) as statements, session_scope(ctx.sessions) as session:
        assert jobs.start_running(session, job_id, "w")
    assert verbs(statements) == ["SELECT jobs", "UPDATE jobs", "INSERT webhook_deliveries"]
    data = last_payload(ctx, job_id)["data"]
    assert data["status"] == "running" and data["previous_status"] == "queued" and data["attempts"] == 1
    with ctx.sessions() as session:
        first = session.get(jobs.Job, job_id)
        assert first is not None and first.started_at is not None
        started = first.started_at
    with recorded_statements(ctx.engine) as again, session_scope(ctx.sessions) as session:
        assert jobs.start_running(session, job_id, "w")
        assert not jobs.start_running(session, job_id, "someone-else")
    assert verbs(again) == ["SELECT jobs", "UPDATE jobs", "SELECT jobs", "UPDATE jobs"]
    assert last_payload(ctx, job_id)["data"] == data  # no second delivery
    with ctx.sessions() as session:
        job = session.get(jobs.Job, job_id)
        assert job is not None and job.status == jobs.RUNNING and job.lease_owner == "w"
        assert job.started_at == started  # the first start's time kept


CHECKS = [
    check_a_job_not_in_a_sweep,
    check_a_sweep_child,
    check_a_lost_guard_ends_nothing,
    check_settle_reads_once,
    check_cancelling_an_unstarted_child,
    check_start_running_reads_once,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_terminal_transition_statements_on_sqlite(check: Any, ctx: ServiceContext, published: list[Message]) -> None:
    check(ctx, published)


def test_without_returning_the_row_is_read_back_with_the_same_result(
    ctx: ServiceContext, published: list[Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.35 has no UPDATE … RETURNING: one SELECT after the update instead, same rows and messages."""
    set_tenant_webhook(ctx)
    sweep_id, (job_id,) = running_jobs(ctx, in_sweep=True)
    published.clear()
    monkeypatch.setattr(ctx.engine.dialect, "update_returning", False)
    statements = finish_statements(ctx, job_id, metrics=METRICS)
    assert statements == ["SELECT jobs", "UPDATE jobs", "SELECT jobs", "INSERT job_events", "INSERT webhook_deliveries"]
    assert published == [Message(TASK_FINALIZE_SWEEP, sweep_id or "")]
    data = last_payload(ctx, job_id)["data"]
    assert data["status"] == "succeeded" and data["previous_status"] == "running" and data["sweep_id"] == sweep_id
    assert data["metrics"] == {"test_accuracy": 0.97, "sparsity": 0.9}
    # A lost guard stays one UPDATE, with no read-back.
    with recorded_statements(ctx.engine) as lost, session_scope(ctx.sessions) as session:
        assert not jobs.finish(session, job_id, jobs.FAILED, owner="w")
    assert verbs(lost) == ["SELECT jobs", "UPDATE jobs"]
