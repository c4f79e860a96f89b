"""Celery app of the worker: ``celery -A worker.celery_app worker -Q validate,train``.

Reliability settings (acks_late, reject_on_worker_lost, prefetch 1, ignored results) come from
dwf_service.queue.celery_config, so the API publishes with exactly the same configuration.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_shutting_down

from dwf_service.queue import make_celery
from dwf_service.runner import SHUTDOWN
from dwf_service.settings import get_settings

app = make_celery(get_settings(), include=["worker.tasks"])


@worker_shutting_down.connect  # type: ignore[untyped-decorator]  # celery ships no annotations
def _stop_training(**_kwargs: Any) -> None:
    """A warm shutdown makes a running training stop at its next step and go back to the queue."""
    SHUTDOWN.set()
