"""Celery app of the worker: ``celery -A worker.celery_app worker -Q validate,train``.

Reliability settings (acks_late, reject_on_worker_lost, prefetch 1, ignored results, time limits, memory
recycling) come from dwf_service.queue.celery_config, so the API publishes with exactly the same configuration.
Importing this module (which is how the worker starts) refuses time limits that could outlive the broker's
visibility timeout.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import TimeLimitExceeded
from celery.signals import task_failure, worker_process_init, worker_shutting_down

from dwf_service.logging_json import install_worker_logging
from dwf_service.queue import QUEUE_OF, check_worker_limits, make_celery
from dwf_service.runner import SHUTDOWN
from dwf_service.settings import get_settings

log = logging.getLogger(__name__)

check_worker_limits(get_settings())
app = make_celery(get_settings(), include=["worker.tasks"])
install_worker_logging()  # JSON logs (DWF_LOG_FORMAT / DWF_ENV=production) with the job id of each task


@worker_shutting_down.connect  # type: ignore[untyped-decorator]  # celery ships no annotations
def _stop_training(**_kwargs: Any) -> None:
    """A warm shutdown makes a running training stop at its next step and go back to the queue."""
    SHUTDOWN.set()


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _preload_training_stack(**_kwargs: Any) -> None:
    """Import torch and dwf_core in each new pool child before it takes a task.

    Task time limits then measure work, not a cold import (seconds on a small box), and a soft limit can never
    fire in the middle of an import and leave the child with half-initialized modules. Flush-to-zero is set
    first, before torch starts its intra-op threads, so they inherit it (dwf_core.denormals).
    """
    from dwf_core.denormals import flush_denormals

    flush_denormals()
    import dwf_core.pipeline  # noqa: F401


@task_failure.connect  # type: ignore[untyped-decorator]
def _hard_time_limit(
    sender: Any = None, exception: BaseException | None = None, kwargs: dict[str, Any] | None = None, **_: Any
) -> None:
    """The pool killed a child at the hard time limit: fail its job now instead of waiting for the lease.

    Runs in the worker's main process (the child is gone), so it uses a short-lived engine of its own: an engine
    made here would otherwise be inherited by the children forked later.
    """
    if not isinstance(exception, TimeLimitExceeded) or getattr(sender, "name", None) not in QUEUE_OF:
        return
    job_id = (kwargs or {}).get("job_id")
    if not isinstance(job_id, str):
        return
    from dwf_service import jobs
    from dwf_service.db import make_engine, make_session_factory, session_scope

    limit = get_settings().task_time_limit
    error = {"code": "time_limit", "message": f"the task ran past its hard time limit of {limit:g} s", "param": None}
    engine = make_engine(get_settings().database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            jobs.finish(session, job_id, jobs.FAILED, error=error)
    except Exception:  # the lease and the reconciler still end the job
        log.exception("could not record the hard time limit of %s", job_id)
    finally:
        engine.dispose()
