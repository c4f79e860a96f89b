"""The embedded SQL broker (kombu's SQLAlchemy transport) keeps delivered messages; the reconciler deletes them."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from dwf_service import jobs
from dwf_service.broker_gc import clean_broker, job_of
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job
from dwf_service.queue import TASK_VALIDATE, Message, celery_publisher, make_celery
from dwf_service.runner_loop import start_reconciler


def _job(ctx: ServiceContext, status: str) -> str:
    with session_scope(ctx.sessions) as session:
        job_id = jobs.create_job(session, {"method": {"epochs": 1}}, file_ids={}).id
        session.execute(update(Job).where(Job.id == job_id).values(status=status))
    return job_id


def _rows(ctx: ServiceContext) -> dict[str | None, int]:
    """The broker's message rows: job id → visible."""
    path = Path(ctx.settings.broker_url.removeprefix("sqla+sqlite:///"))
    with sqlite3.connect(path) as db:
        return {
            job_of(payload): visible for payload, visible in db.execute("SELECT payload, visible FROM kombu_message")
        }


def _job_in(message: Any) -> str:
    """The job id of a consumed task message (body: [args, kwargs, embed])."""
    return str(message.payload[1]["job_id"])


def _reconciler_pass(ctx: ServiceContext) -> None:
    stop = threading.Event()
    stop.set()  # the first pass only
    start_reconciler(ctx, stop).join()


def test_reconciler_deletes_acknowledged_messages_and_keeps_pending_and_in_flight(ctx: ServiceContext) -> None:
    assert ctx.settings.broker_url.startswith("sqla+sqlite:///")  # the embedded default
    ctx.settings.broker_keep_delivered_seconds = 0.2
    done, running, waiting = _job(ctx, jobs.SUCCEEDED), _job(ctx, jobs.RUNNING), _job(ctx, jobs.QUEUED)
    publish = celery_publisher(ctx.settings)
    for job_id in (done, running, waiting):
        publish(Message(TASK_VALIDATE, job_id))
    with make_celery(ctx.settings).connection_for_read() as conn:
        queue = conn.SimpleQueue("validate")
        acked = queue.get(timeout=10)
        acked.ack()
        in_flight = queue.get(timeout=10)  # delivered, not acknowledged (as a training with acks_late)
        assert (_job_in(acked), _job_in(in_flight)) == (done, running)
        # kombu marked both delivered rows visible = 0 and deleted neither: the ack is only in the consumer's memory.
        assert _rows(ctx) == {done: 0, running: 0, waiting: 1}
        _reconciler_pass(ctx)
        assert _rows(ctx) == {done: 0, running: 0, waiting: 1}  # delivered less than 0.2 s ago: kept
        time.sleep(0.3)
        _reconciler_pass(ctx)
        assert _rows(ctx) == {running: 0, waiting: 1}  # the in-flight one stays while its job is unfinished
        in_flight.ack()
        with session_scope(ctx.sessions) as session:
            jobs.finish(session, running, jobs.SUCCEEDED)
        _reconciler_pass(ctx)
        assert _rows(ctx) == {waiting: 1}
        pending = queue.get(timeout=10)  # the pending message survived and is delivered as usual
        assert _job_in(pending) == waiting
        pending.ack()
        queue.close()


def test_clean_broker_needs_a_sql_broker_and_a_retention(ctx: ServiceContext) -> None:
    later = datetime.now() + timedelta(days=1)
    celery_publisher(ctx.settings)(Message(TASK_VALIDATE, _job(ctx, jobs.FAILED)))
    with make_celery(ctx.settings).connection_for_read() as conn:
        conn.SimpleQueue("validate").get(timeout=10).ack()
    ctx.settings.broker_keep_delivered_seconds = 0  # keep everything
    assert clean_broker(ctx, now=later) == 0
    ctx.settings.broker_keep_delivered_seconds = 600
    broker_url = ctx.settings.broker_url
    ctx.settings.broker_url = "redis://localhost:1/0"  # Redis deletes on ack; never contacted here
    assert clean_broker(ctx, now=later) == 0
    ctx.settings.broker_url = broker_url
    assert clean_broker(ctx, now=datetime.now()) == 0  # delivered just now
    assert clean_broker(ctx, now=later) == 1
    assert _rows(ctx) == {}


def test_job_of_reads_the_job_id_of_a_stored_celery_message() -> None:
    assert job_of(None) is None and job_of("not json") is None and job_of('{"body": 3}') is None
