"""Job state machine: guarded transitions, the worker lease, events and the reconciler.

validating_files → queued → running → succeeded | failed | cancelled. Every transition is one
``UPDATE … WHERE status IN (…)`` so two processes racing on a job cannot both win.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, Row, or_, select, update
from sqlalchemy.orm import Session

from dwf_service import webhooks
from dwf_service.models import DEFAULT_TENANT_ID, Job, JobEvent, Tenant, utcnow
from dwf_service.queue import TASK_FINALIZE_SWEEP, TASK_TRAIN, TASK_VALIDATE, enqueue
from dwf_service.settings import Settings

log = logging.getLogger(__name__)

VALIDATING = "validating_files"
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (VALIDATING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (VALIDATING, QUEUED, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
PHASES = ("loading", "training", "collapsing", "finetuning", "evaluating", "exporting", "frontier")


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (JSON, and PostgreSQL's json type, have no inf/NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    type: str = "message",
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    """Append one event to the job's log (in the caller's transaction)."""
    session.add(JobEvent(job_id=job_id, message=message, type=type, level=level, data=jsonable(data) if data else None))


def _update(session: Session, job_id: str, where: Iterable[Any], values: dict[str, Any]) -> bool:
    values.setdefault("updated_at", utcnow())
    result = session.execute(update(Job).where(Job.id == job_id, *where).values(**values))
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def _update_returning(
    session: Session, job_id: str, where: Iterable[Any], values: dict[str, Any], columns: Iterable[Any]
) -> Row[Any] | None:
    """``_update`` that also gives ``columns`` of the row as it wrote it; None when the guard kept the row as is."""
    if not session.get_bind().dialect.update_returning:
        # SQLite before 3.35 has no RETURNING: read the row back after the update, in the same transaction.
        if not _update(session, job_id, where, values):
            return None
        return session.execute(select(*columns).where(Job.id == job_id)).one()
    values.setdefault("updated_at", utcnow())
    statement = update(Job).where(Job.id == job_id, *where).values(**values).returning(*columns)
    return session.execute(statement).one_or_none()


# What a transition that sends a webhook reads before its update (every end; start_running): the status it leaves
# (the webhook's previous_status) and the tenant's webhook URL (used when the job has none of its own). Needs the join
# with tenants.
_BEFORE_END = (Job.status, Tenant.webhook_url.label("tenant_url"))


def create_job(
    session: Session,
    request: dict[str, Any],
    *,
    file_ids: dict[str, str | None],
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    tenant_id: str = DEFAULT_TENANT_ID,
    sweep_id: str | None = None,
    webhook: tuple[str, str] | None = None,
) -> Job:
    """Insert a job of ``tenant_id`` (a child of ``sweep_id`` when given) in ``validating_files`` and enqueue its
    validation (sent after commit). ``webhook``: the job's own (url, secret), called on its status changes."""
    from dwf_service.models import new_id

    now = utcnow()
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        status=VALIDATING,
        request=request,
        model_file_id=file_ids.get("model"),
        weights_file_id=file_ids.get("weights"),
        dataset_file_id=file_ids.get("dataset"),
        epochs=int(request["method"]["epochs"]),
        attempts=0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        sweep_id=sweep_id,
        webhook_url=webhook[0] if webhook else None,
        webhook_secret=webhook[1] if webhook else None,
        enqueued_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "job created; validating the files")
    webhooks.on_status(session, job.id, VALIDATING, None)
    enqueue(session, TASK_VALIDATE, job.id)
    return job


def acquire_lease(
    session: Session, job_id: str, owner: str, statuses: tuple[str, ...], lease_seconds: float, max_attempts: int
) -> bool:
    """Take the lease of a job in ``statuses`` that may run (no live lease, no cancel request, an attempt left);
    counts the attempt.

    ``attempts`` counts runs that started: a job that may not run again is never taken but ended by ``settle``,
    so the row ends the same whichever recovery path (broker re-delivery or reconciler) reaches it first.
    """
    now = utcnow()
    return _update(
        session,
        job_id,
        [Job.status.in_(statuses), *_runnable(now, max_attempts)],
        {
            "lease_owner": owner,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "heartbeat_at": now,
            "attempts": Job.attempts + 1,
        },
    )


def _lease_free(now: datetime) -> ColumnElement[bool]:
    """Nobody holds a live lease: never taken, released, or expired (its worker stopped heart-beating)."""
    return or_(Job.lease_owner.is_(None), Job.lease_expires_at < now)


def _runnable(now: datetime, max_attempts: int) -> list[ColumnElement[bool]]:
    return [_lease_free(now), Job.cancel_requested.is_(False), Job.attempts < max_attempts]


def settle(session: Session, job_id: str, max_attempts: int, statuses: tuple[str, ...] = ACTIVE) -> bool:
    """End a job in ``statuses`` with no live run that may not run again; True when this call ended it.

    Cancelled when a cancel was requested, else failed (``too_many_attempts``) when it used all its attempts.
    The one place that decides this, called by the worker when a message finds such a job and by the reconciler
    when a lease expires: both read the same row, so status, ``attempts`` and error do not depend on which of
    them gets there first.
    """
    now = utcnow()
    where = [Job.status.in_(statuses), _lease_free(now)]
    row = session.execute(
        select(Job.attempts, Job.lease_owner, Job.cancel_requested, *_BEFORE_END)
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(Job.id == job_id, *where, or_(Job.cancel_requested.is_(True), Job.attempts >= max_attempts))
    ).one_or_none()
    if row is None:
        return False
    before = (row.status, row.tenant_url)  # what _end would read again
    if row.cancel_requested:
        return _finish_where(session, job_id, CANCELLED, [*where, Job.cancel_requested.is_(True)], before=before)
    # A lease still set is one whose worker stopped heart-beating; a released one was re-queued after an error.
    last = "its worker stopped responding" if row.lease_owner is not None else "it was re-queued after an error"
    error = {
        "code": "too_many_attempts",
        "message": f"gave up after {row.attempts} attempts; the last one ended without a result: {last}",
        "param": None,
    }
    where += [Job.cancel_requested.is_(False), Job.attempts >= max_attempts]
    return _finish_where(session, job_id, FAILED, where, error=error, before=before)


def heartbeat(session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Extend the lease; False when it was lost (expired and taken, or the job left the active states)."""
    now = utcnow()
    return _update(
        session,
        job_id,
        [Job.lease_owner == owner, Job.status.in_(ACTIVE)],
        {"lease_expires_at": now + timedelta(seconds=lease_seconds), "heartbeat_at": now},
    )


def update_owned(session: Session, job_id: str, owner: str, **values: Any) -> bool:
    """Write fields (progress, phase, metrics…) of a job whose lease ``owner`` holds."""
    return _update(session, job_id, [Job.lease_owner == owner, Job.status.in_(ACTIVE)], values)


def start_running(session: Session, job_id: str, owner: str) -> bool:
    """queued|running → running for the lease holder; sets started_at on the first attempt.

    Two statements, as a job's end (``_end``): one SELECT (the status it leaves, started_at, the tenant's webhook
    URL) and the guarded UPDATE … RETURNING the webhook payload's columns (not three reads: the row, its status, the
    payload's row)."""
    found = session.execute(
        select(Job.started_at, *_BEFORE_END).join(Tenant, Tenant.id == Job.tenant_id).where(Job.id == job_id)
    ).one_or_none()
    if found is None:
        return False
    row = _update_returning(
        session,
        job_id,
        [Job.lease_owner == owner, Job.status.in_((QUEUED, RUNNING))],
        {"status": RUNNING, "started_at": found.started_at or utcnow(), "phase": "loading"},
        webhooks.PAYLOAD_COLUMNS,
    )
    if row is None:
        return False
    if found.status != RUNNING:  # a re-delivered running job does not change status
        webhooks.queue_delivery(session, job_id, RUNNING, found.status, row, found.tenant_url)
    return True


def mark_validated(session: Session, job_id: str, owner: str, summary: str) -> bool:
    """validating_files → queued: release the lease, reset the attempt count, enqueue training."""
    ok = _update(
        session,
        job_id,
        [Job.lease_owner == owner, Job.status == VALIDATING],
        {
            "status": QUEUED,
            "lease_owner": None,
            "lease_expires_at": None,
            "attempts": 0,
            "enqueued_at": utcnow(),
        },
    )
    if ok:
        add_event(session, job_id, f"files validated: {summary}; queued for training")
        webhooks.on_status(session, job_id, QUEUED, VALIDATING)
        enqueue(session, TASK_TRAIN, job_id)
    return ok


def finish(
    session: Session,
    job_id: str,
    status: str,
    *,
    owner: str | None = None,
    error: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """Move an active job to a terminal status (only the lease holder may, when ``owner`` is given)."""
    where: list[Any] = [Job.status.in_(ACTIVE)]
    if owner is not None:
        where.append(Job.lease_owner == owner)
    return _finish_where(session, job_id, status, where, error=error, **values)


def _finish_where(
    session: Session,
    job_id: str,
    status: str,
    where: list[Any],
    *,
    error: dict[str, Any] | None = None,
    before: tuple[str | None, str | None] | None = None,
    **values: Any,
) -> bool:
    if status not in TERMINAL:
        raise ValueError(f"{status!r} is not terminal")
    values.update(status=status, finished_at=utcnow(), lease_owner=None, lease_expires_at=None)
    if error is not None:
        values.update(error_code=error.get("code"), error_message=error.get("message"), error_param=error.get("param"))
    ok = _end(session, job_id, where, values, before)
    if ok:
        if status == FAILED and error is not None:
            where_txt = f" ({error['param']})" if error.get("param") else ""
            add_event(
                session, job_id, f"failed [{error.get('code')}]{where_txt}: {error.get('message')}", level="error"
            )
        else:
            add_event(session, job_id, f"job {status}")
    return ok


def requeue(session: Session, job_id: str, owner: str | None, reason: str, *, count_attempt: bool) -> bool:
    """Give an active job back to the queue of its stage (validate or train) and enqueue it."""
    job = session.get(Job, job_id)
    if job is None or job.status not in ACTIVE:
        return False
    where: list[Any] = [Job.status == job.status]
    if owner is not None:
        where.append(Job.lease_owner == owner)
    values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None, "enqueued_at": utcnow()}
    if job.status == RUNNING:
        values["status"] = QUEUED
    if not count_attempt:
        values["attempts"] = Job.attempts - 1
    if not _update(session, job_id, where, values):
        return False
    add_event(session, job_id, f"re-queued: {reason}", level="warn")
    if "status" in values:  # running → queued; validating_files and queued jobs keep their status
        webhooks.on_status(session, job_id, QUEUED, RUNNING)
    enqueue(session, TASK_VALIDATE if job.status == VALIDATING else TASK_TRAIN, job_id)
    return True


def request_cancel(session: Session, job_id: str) -> None:
    """Cancel now when the job has not started; a running job stops at its next step (the worker sees the flag)."""
    if not _update(session, job_id, [Job.status.in_(ACTIVE)], {"cancel_requested": True}):
        return
    if not _cancel_unstarted(session, job_id):
        add_event(session, job_id, "cancellation requested")


def _cancel_unstarted(session: Session, job_id: str) -> bool:
    now = utcnow()
    ok = _end(
        session,
        job_id,
        [Job.status.in_((VALIDATING, QUEUED))],
        {"status": CANCELLED, "finished_at": now, "lease_owner": None, "lease_expires_at": None},
    )
    if ok:
        add_event(session, job_id, "job cancelled")
    return ok


def _end(
    session: Session,
    job_id: str,
    where: list[Any],
    values: dict[str, Any],
    before: tuple[str | None, str | None] | None = None,
) -> bool:
    """The guarded update to a terminal ``values["status"]``, then what every end does: the sweep's finalize message
    (``_ended``) and the webhook delivery, all in the caller's transaction; True when this call ended the job.

    Two statements: one SELECT before the update (skipped when the caller read ``before`` already) and the update,
    whose RETURNING gives the sweep and the webhook payload's columns as written (not three SELECTs: the status
    before, the sweep id, the payload's row). The guarded update alone decides who ended the job, as everywhere.
    """
    if before is None:
        found = session.execute(
            select(*_BEFORE_END).join(Tenant, Tenant.id == Job.tenant_id).where(Job.id == job_id)
        ).one_or_none()
        before = (found.status, found.tenant_url) if found is not None else (None, None)
    previous, tenant_url = before
    row = _update_returning(session, job_id, where, values, webhooks.PAYLOAD_COLUMNS)  # sweep_id among them
    if row is None:
        return False
    _ended(session, row.sweep_id)
    webhooks.queue_delivery(session, job_id, values["status"], previous, row, tenant_url)
    return True


def _ended(session: Session, sweep_id: str | None) -> None:
    """A job reached a terminal status: a sweep's child asks for its sweep's frontier (made once all have ended)."""
    if sweep_id is not None:
        enqueue(session, TASK_FINALIZE_SWEEP, sweep_id)


def reconcile(session: Session, settings: Settings) -> list[str]:
    """Bring back jobs whose worker vanished (expired lease) or whose message was lost; returns the job ids touched.

    The embedded brokers lose a message in flight when the whole worker dies (reliability-tests.md §7), and
    Redis re-delivers only after its visibility timeout, so the lease is what recovers a job in every mode.
    """
    now = utcnow()
    touched: list[str] = []
    expired = session.scalars(
        select(Job).where(Job.status.in_(ACTIVE), Job.lease_owner.is_not(None), Job.lease_expires_at < now)
    ).all()
    for job in expired:
        done = settle(session, job.id, settings.max_attempts) or requeue(
            session, job.id, job.lease_owner, "the worker's lease expired", count_attempt=True
        )
        if done:
            touched.append(job.id)
    stale = now - timedelta(seconds=settings.requeue_after_seconds)
    lost = session.scalars(
        select(Job).where(Job.status.in_((VALIDATING, QUEUED)), Job.lease_owner.is_(None), Job.enqueued_at < stale)
    ).all()
    for job in lost:
        if _update(session, job.id, [Job.lease_owner.is_(None), Job.status == job.status], {"enqueued_at": now}):
            enqueue(session, TASK_VALIDATE if job.status == VALIDATING else TASK_TRAIN, job.id)
            touched.append(job.id)
    if touched:
        log.info("reconciler touched %s", touched)
    return touched
