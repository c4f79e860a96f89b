"""Enqueue after commit: messages are buffered on the session and published only once its transaction commits.

The database is the truth and the broker only a hint (a lost message is re-sent by the reconciler), but a
message published before the commit could reach a worker that then cannot see the row yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from celery import Celery

    from dwf_service.settings import Settings

log = logging.getLogger(__name__)

TASK_VALIDATE = "dwf.validate_job"
TASK_TRAIN = "dwf.train_job"
# Makes a sweep's frontier once its children have ended: seconds of CPU, so it shares the fast "validate" queue.
TASK_FINALIZE_SWEEP = "dwf.finalize_sweep"
QUEUE_OF = {TASK_VALIDATE: "validate", TASK_TRAIN: "train", TASK_FINALIZE_SWEEP: "validate"}
# The keyword argument that carries a message's id to its task.
ID_KWARG = {TASK_VALIDATE: "job_id", TASK_TRAIN: "job_id", TASK_FINALIZE_SWEEP: "sweep_id"}
_OUTBOX = "dwf_outbox"
_PUBLISHER = "dwf_publisher"


@dataclass(frozen=True)
class Message:
    """One task to send: its name and the job (for TASK_FINALIZE_SWEEP: the sweep) it is about."""

    task: str
    job_id: str


# Sends one message to the broker (Celery in production, a list in tests).
Publisher = Callable[[Message], None]


def enqueue(session: Session, task: str, job_id: str) -> None:
    """Buffer a task for ``job_id`` (a sweep id for TASK_FINALIZE_SWEEP); it is sent after ``session`` commits and
    dropped if it rolls back."""
    if task not in QUEUE_OF:
        raise ValueError(f"unknown task {task!r}")
    outbox: list[Message] = session.info.setdefault(_OUTBOX, [])
    message = Message(task, job_id)
    if message not in outbox:  # e.g. a sweep's children cancelled together: one finalize message is enough
        outbox.append(message)


def _after_commit(session: Session) -> None:
    outbox: list[Message] = session.info.pop(_OUTBOX, [])
    publisher: Publisher | None = session.info.get(_PUBLISHER)
    for message in outbox:
        if publisher is None:
            log.warning("no publisher configured; %s for %s left to the reconciler", message.task, message.job_id)
            continue
        try:
            publisher(message)
        except Exception:  # the job row is committed; the reconciler re-sends what the broker did not take
            log.exception("could not publish %s for %s", message.task, message.job_id)


def _after_rollback(session: Session) -> None:
    session.info.pop(_OUTBOX, None)


def install_after_commit_publishing(factory: sessionmaker[Session], publisher: Publisher | None = None) -> None:
    """Make sessions of ``factory`` publish their outbox after commit through ``publisher``."""
    factory.kw.setdefault("info", {})[_PUBLISHER] = publisher
    event.listen(factory, "after_commit", _after_commit)
    event.listen(factory, "after_soft_rollback", lambda session, _tx: _after_rollback(session))


def set_publisher(factory: sessionmaker[Session], publisher: Publisher | None) -> None:
    """Replace the publisher of sessions made from now on (tests use a list-appending fake)."""
    factory.kw.setdefault("info", {})[_PUBLISHER] = publisher


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings of reliability-tests.md §1, shared by the publisher and the worker."""
    from kombu.entity import Exchange, Queue

    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        # Explicit exchanges: a Queue without one gets Celery's default exchange and routing key ("validate").
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
            for name in ("validate", "train")
        ],
        "task_default_queue": "validate",
        "task_routes": {name: {"queue": queue} for name, queue in QUEUE_OF.items()},
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_timeout,
        # A new pool child imports torch before it reports ready (worker.celery_app preloads it): allow for that.
        "worker_proc_alive_timeout": 120.0,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }
    if settings.task_soft_time_limit:
        conf["task_soft_time_limit"] = settings.task_soft_time_limit
    if settings.task_time_limit:
        conf["task_time_limit"] = settings.task_time_limit
    if settings.worker_max_memory_per_child_kib:
        conf["worker_max_memory_per_child"] = settings.worker_max_memory_per_child_kib
    if _is_redis(settings):
        # The DB lease, not the broker, brings crashed jobs back; the timeout only has to exceed the longest job.
        options = {"visibility_timeout": settings.redis_visibility_timeout}
        conf["broker_transport_options"] = options
        conf["result_backend_transport_options"] = options
        conf["visibility_timeout"] = settings.redis_visibility_timeout
    return conf


def _is_redis(settings: Settings) -> bool:
    return settings.broker_url.startswith(("redis://", "rediss://"))


def check_worker_limits(settings: Settings) -> None:
    """Refuse a worker whose task could outlive Redis's visibility timeout (it would be delivered twice).

    Order required: ``task_soft_time_limit < task_time_limit < redis_visibility_timeout`` (reliability-tests.md
    §1); with Redis the hard limit must be set. Raises ValueError naming the offending settings.
    """
    soft, hard = settings.task_soft_time_limit, settings.task_time_limit
    if soft and hard and soft >= hard:
        raise ValueError(f"DWF_TASK_SOFT_TIME_LIMIT ({soft:g}) must be below DWF_TASK_TIME_LIMIT ({hard:g})")
    if not _is_redis(settings):
        return
    timeout = settings.redis_visibility_timeout
    if not hard:
        raise ValueError(
            f"with a Redis broker DWF_TASK_TIME_LIMIT must be set below DWF_REDIS_VISIBILITY_TIMEOUT ({timeout}): "
            "an unlimited task outlives the visibility timeout and is delivered again"
        )
    if hard >= timeout:
        raise ValueError(f"DWF_TASK_TIME_LIMIT ({hard:g}) must be below DWF_REDIS_VISIBILITY_TIMEOUT ({timeout})")


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    """A Celery app configured for ``settings`` (the API uses it to publish, the worker to consume)."""
    from celery import Celery

    if settings.broker_url.startswith("sqla+sqlite:///"):
        from pathlib import Path

        Path(settings.broker_url.removeprefix("sqla+sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    app = Celery("dwf", include=include or [])
    app.conf.update(celery_config(settings))
    return app


def celery_publisher(settings: Settings) -> Callable[[Message], None]:
    """A Publisher that sends task messages by name (the sender never imports the task code)."""
    app = make_celery(settings)

    def publish(message: Message) -> None:
        app.send_task(message.task, kwargs={ID_KWARG[message.task]: message.job_id}, queue=QUEUE_OF[message.task])

    return publish


def broker_ping(settings: Settings) -> None:
    """Raise when the broker cannot be reached (one quick connection attempt)."""
    from kombu.connection import Connection

    with Connection(settings.broker_url, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
        conn.ensure_connection(max_retries=1)
