"""Job state machine: guarded transitions, leases, cancellation, reconciler, enqueue after commit."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from dwf_service import jobs
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job, JobEvent, utcnow
from dwf_service.queue import TASK_TRAIN, TASK_VALIDATE, Message
from dwf_service.runner_loop import reconcile_once

REQUEST = {"model": {"name": "lenet_300_100"}, "dataset": {"file_id": "file-x"}, "method": {"depth": 3, "epochs": 2}}


def _new_job(ctx: ServiceContext) -> str:
    with session_scope(ctx.sessions) as session:
        return jobs.create_job(session, REQUEST, file_ids={"dataset": "file-x"}).id


def _job(ctx: ServiceContext, job_id: str) -> Job:
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_create_enqueues_validation_only_after_commit(ctx: ServiceContext, published: list[Message]) -> None:
    with ctx.sessions() as session:
        job = jobs.create_job(session, REQUEST, file_ids={})
        assert published == []  # not before the commit
        session.commit()
    assert published == [Message(TASK_VALIDATE, job.id)]
    assert _job(ctx, job.id).status == jobs.VALIDATING


def test_rollback_drops_the_buffered_message(ctx: ServiceContext, published: list[Message]) -> None:
    with ctx.sessions() as session:
        jobs.create_job(session, REQUEST, file_ids={})
        session.rollback()
        session.commit()
    assert published == []


def test_lease_is_exclusive_until_it_expires(ctx: ServiceContext) -> None:
    job_id = _new_job(ctx)
    with session_scope(ctx.sessions) as session:
        assert jobs.acquire_lease(session, job_id, "a", (jobs.VALIDATING,), 60, 3)
        assert not jobs.acquire_lease(session, job_id, "b", (jobs.VALIDATING,), 60, 3)
        assert not jobs.acquire_lease(session, job_id, "b", (jobs.QUEUED,), 60, 3)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        assert not jobs.heartbeat(session, job_id, "b", 60)
        assert jobs.acquire_lease(session, job_id, "b", (jobs.VALIDATING,), 60, 3)
        assert not jobs.heartbeat(session, job_id, "a", 60)
    assert _job(ctx, job_id).attempts == 2


def test_validated_job_is_queued_with_a_train_message(ctx: ServiceContext, published: list[Message]) -> None:
    job_id = _new_job(ctx)
    with session_scope(ctx.sessions) as session:
        jobs.acquire_lease(session, job_id, "w", (jobs.VALIDATING,), 60, 3)
        assert jobs.mark_validated(session, job_id, "w", "ok")
        assert not jobs.mark_validated(session, job_id, "w", "twice")
    job = _job(ctx, job_id)
    assert (job.status, job.lease_owner, job.attempts) == (jobs.QUEUED, None, 0)
    assert published[-1] == Message(TASK_TRAIN, job_id)


def test_finish_only_by_the_lease_holder_and_only_once(ctx: ServiceContext) -> None:
    job_id = _new_job(ctx)
    with session_scope(ctx.sessions) as session:
        jobs.acquire_lease(session, job_id, "w", (jobs.VALIDATING,), 60, 3)
        error = {"code": "bad", "message": "no", "param": "dataset"}
        assert not jobs.finish(session, job_id, jobs.FAILED, owner="other", error=error)
        assert jobs.finish(session, job_id, jobs.FAILED, owner="w", error=error)
        assert not jobs.finish(session, job_id, jobs.SUCCEEDED)
    job = _job(ctx, job_id)
    assert (job.status, job.error_param, job.finished_at is not None) == (jobs.FAILED, "dataset", True)


def test_cancel_before_start_is_immediate_and_running_sets_the_flag(ctx: ServiceContext) -> None:
    waiting, running = _new_job(ctx), _new_job(ctx)
    with session_scope(ctx.sessions) as session:
        session.execute(update(Job).where(Job.id == running).values(status=jobs.RUNNING))
        jobs.request_cancel(session, waiting)
        jobs.request_cancel(session, running)
    assert _job(ctx, waiting).status == jobs.CANCELLED
    assert (_job(ctx, running).status, _job(ctx, running).cancel_requested) == (jobs.RUNNING, True)


def test_reconciler_requeues_expired_lease_then_gives_up(ctx: ServiceContext, published: list[Message]) -> None:
    job_id = _new_job(ctx)
    for attempt in range(1, ctx.settings.max_attempts + 1):
        with session_scope(ctx.sessions) as session:
            assert jobs.acquire_lease(session, job_id, f"w{attempt}", (jobs.VALIDATING,), 60, ctx.settings.max_attempts)
            session.execute(
                update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
        assert reconcile_once(ctx) == [job_id]
    job = _job(ctx, job_id)
    assert (job.status, job.error_code, job.attempts) == (jobs.FAILED, "too_many_attempts", ctx.settings.max_attempts)
    assert [m.task for m in published] == [TASK_VALIDATE] * ctx.settings.max_attempts
    with ctx.sessions() as session:
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
    assert any("re-queued" in m for m in messages)


def test_reconciler_resends_a_lost_message(ctx: ServiceContext, published: list[Message]) -> None:
    job_id = _new_job(ctx)
    published.clear()
    assert reconcile_once(ctx) == []  # fresh: its message may still be on its way
    with session_scope(ctx.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow() - timedelta(hours=1)))
    assert reconcile_once(ctx) == [job_id]
    assert published == [Message(TASK_VALIDATE, job_id)]


def test_jsonable_drops_non_finite_numbers() -> None:
    assert jobs.jsonable({"a": float("inf"), "b": [1.5, float("nan")], "c": "x"}) == {
        "a": None,
        "b": [1.5, None],
        "c": "x",
    }
