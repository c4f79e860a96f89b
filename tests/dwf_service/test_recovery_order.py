"""The two recovery paths of a job whose worker died, in every order: the broker's re-delivery (the worker's take,
``runner._take``) and the reconciler (``reconcile_once``). The row must end the same whichever comes first, and
``attempts`` counts runs that started, never more than ``max_attempts`` (the fault tier's T4 race, made
deterministic here by calling both paths directly instead of racing real processes)."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from dwf_service import jobs, runner
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job, JobEvent, utcnow
from dwf_service.queue import TASK_TRAIN, Message
from dwf_service.runner_loop import reconcile_once

REQUEST = {"model": {"name": "lenet_300_100"}, "dataset": {"file_id": "file-x"}, "method": {"depth": 3, "epochs": 2}}
TRAIN_STAGE = (jobs.QUEUED, jobs.RUNNING)
TERMINAL_EVENTS = {f"job {status}" for status in jobs.TERMINAL}


def _job_that_died(ctx: ServiceContext, *, attempts: int, cancel_requested: bool = False, expired: bool = True) -> str:
    """A running job whose worker (lease owner "dead") stopped heart-beating after ``attempts`` runs."""
    with session_scope(ctx.sessions) as session:
        job_id = jobs.create_job(session, REQUEST, file_ids={"dataset": "file-x"}).id
        session.flush()
        expires = utcnow() + timedelta(seconds=-1 if expired else 60)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=jobs.RUNNING,
                attempts=attempts,
                lease_owner="dead",
                lease_expires_at=expires,
                cancel_requested=cancel_requested,
            )
        )
    return job_id


def _redelivery(ctx: ServiceContext, job_id: str) -> None:
    """The broker hands the job's message to a worker again: the worker's take (an attempt only if a run starts)."""
    job = runner._take(ctx, job_id, "redelivered", TRAIN_STAGE)
    if job is not None:
        with session_scope(ctx.sessions) as session:
            assert jobs.start_running(session, job_id, "redelivered")


def _outcome(ctx: ServiceContext, job_id: str) -> dict[str, Any]:
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
        return {
            "status": job.status,
            "attempts": job.attempts,
            "error_code": job.error_code,
            "error_message": job.error_message,
            "lease_owner": job.lease_owner,
            "terminal_events": sum(m.startswith("failed [") or m in TERMINAL_EVENTS for m in messages),
        }


ORDERS = ["redelivery_first", "reconciler_first"]


def _both_paths(ctx: ServiceContext, job_id: str, order: str) -> None:
    steps = [lambda: _redelivery(ctx, job_id), lambda: reconcile_once(ctx)]
    for step in steps if order == "redelivery_first" else reversed(steps):
        step()


@pytest.mark.parametrize("order", ORDERS)
def test_out_of_attempts_fails_once_without_counting_a_run(
    ctx: ServiceContext, published: list[Message], order: str
) -> None:
    last = ctx.settings.max_attempts
    job_id = _job_that_died(ctx, attempts=last)
    published.clear()
    _both_paths(ctx, job_id, order)
    assert _outcome(ctx, job_id) == {
        "status": jobs.FAILED,
        "attempts": last,
        "error_code": "too_many_attempts",
        "error_message": f"gave up after {last} attempts; the last one ended without a result: "
        "its worker stopped responding",
        "lease_owner": None,
        "terminal_events": 1,
    }
    assert published == []  # nothing re-queued


@pytest.mark.parametrize("order", ORDERS)
def test_attempts_left_runs_once_more(ctx: ServiceContext, published: list[Message], order: str) -> None:
    job_id = _job_that_died(ctx, attempts=1)
    published.clear()
    _both_paths(ctx, job_id, order)
    assert _outcome(ctx, job_id) == {
        "status": jobs.RUNNING,
        "attempts": 2,
        "error_code": None,
        "error_message": None,
        "lease_owner": "redelivered",
        "terminal_events": 0,
    }
    # the reconciler re-queues only when it comes first; that message then finds the job leased and is dropped
    assert published == ([Message(TASK_TRAIN, job_id)] if order == "reconciler_first" else [])
    _redelivery(ctx, job_id)
    assert _outcome(ctx, job_id)["attempts"] == 2


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("attempts", [1, 2])
def test_cancel_requested_cancels_without_counting_a_run(
    ctx: ServiceContext, published: list[Message], order: str, attempts: int
) -> None:
    job_id = _job_that_died(ctx, attempts=attempts, cancel_requested=True)
    _both_paths(ctx, job_id, order)
    outcome = _outcome(ctx, job_id)
    assert (outcome["status"], outcome["attempts"], outcome["terminal_events"]) == (jobs.CANCELLED, attempts, 1)


def test_a_live_lease_is_left_alone_by_both(ctx: ServiceContext, published: list[Message]) -> None:
    job_id = _job_that_died(ctx, attempts=ctx.settings.max_attempts, expired=False)
    published.clear()
    _both_paths(ctx, job_id, "redelivery_first")
    outcome = _outcome(ctx, job_id)
    assert (outcome["status"], outcome["attempts"], outcome["lease_owner"]) == (
        jobs.RUNNING,
        ctx.settings.max_attempts,
        "dead",
    )
    assert published == []


@pytest.mark.parametrize("seed", range(12))
def test_poison_job_under_any_schedule(ctx: ServiceContext, published: list[Message], seed: int) -> None:
    """A job whose every run kills its worker, under a random interleaving of re-deliveries (acks_late +
    reject_on_worker_lost give one per death), reconciler passes and the messages they publish: it always
    ends failed with attempts == max_attempts, after exactly max_attempts runs."""
    rng = random.Random(seed)
    job_id = _job_that_died(ctx, attempts=0, expired=True)
    with session_scope(ctx.sessions) as session:  # queued, never run: its first message is pending
        session.execute(update(Job).where(Job.id == job_id).values(status=jobs.QUEUED, lease_owner=None))
    published.clear()
    pending = ["message"]
    runs = 0
    for _ in range(200):
        pending += ["message" for m in published if m == Message(TASK_TRAIN, job_id)]
        published.clear()
        if not pending:
            break
        action = pending.pop(rng.randrange(len(pending)))
        if action == "message":
            job = runner._take(ctx, job_id, f"run-{runs}", TRAIN_STAGE)
            if job is not None:  # the run starts and kills its worker: lease left to expire, message re-delivered
                runs += 1
                with session_scope(ctx.sessions) as session:
                    session.execute(
                        update(Job)
                        .where(Job.id == job_id)
                        .values(status=jobs.RUNNING, lease_expires_at=utcnow() - timedelta(seconds=1))
                    )
                pending += ["message", "reconcile"]
        else:
            reconcile_once(ctx)
    outcome = _outcome(ctx, job_id)
    assert not pending
    assert (outcome["status"], outcome["attempts"], outcome["error_code"], runs) == (
        jobs.FAILED,
        ctx.settings.max_attempts,
        "too_many_attempts",
        ctx.settings.max_attempts,
    )
    assert outcome["terminal_events"] == 1
