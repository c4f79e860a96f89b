"""Celery tasks: ~10-line adapters that hand a job id to dwf_service.runner."""

from __future__ import annotations

from functools import lru_cache

from dwf_service import runner, sweeps
from dwf_service.context import ServiceContext
from dwf_service.queue import TASK_FINALIZE_SWEEP, TASK_TRAIN, TASK_VALIDATE
from dwf_service.runner import DB_ERRORS
from dwf_service.settings import get_settings
from worker.celery_app import app

# A database that is away (restart, failover) is waited out: retried with exponential backoff and jitter, up to
# ~2 minutes in all; the job row's lease and the reconciler cover anything longer.
RETRY = {"autoretry_for": DB_ERRORS, "retry_backoff": 2, "retry_backoff_max": 60, "max_retries": 6}


@lru_cache(maxsize=1)
def context() -> ServiceContext:
    """The worker process's settings, sessions and storage (built on first use, after the fork)."""
    return ServiceContext.create(get_settings())


@app.task(name=TASK_VALIDATE, ignore_result=True, **RETRY)  # type: ignore[untyped-decorator]
def validate_job(*, job_id: str) -> None:
    """Fast CPU validation of a job's files and settings."""
    runner.validate_job(context(), job_id)


@app.task(name=TASK_TRAIN, ignore_result=True, **RETRY)  # type: ignore[untyped-decorator]
def train_job(*, job_id: str) -> None:
    """Train, collapse, export and store a validated job."""
    runner.train_job(context(), job_id)


@app.task(name=TASK_FINALIZE_SWEEP, ignore_result=True, **RETRY)  # type: ignore[untyped-decorator]
def finalize_sweep(*, sweep_id: str) -> None:
    """Store a sweep's frontier once all its children have ended (a no-op before that, and after)."""
    sweeps.finalize_sweep(context(), sweep_id)
