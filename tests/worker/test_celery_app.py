"""The Celery app carries the reliability settings; the tasks are thin adapters over dwf_service.runner."""

from __future__ import annotations

import pytest

from dwf_service import runner
from dwf_service.queue import TASK_TRAIN, TASK_VALIDATE
from worker import tasks
from worker.celery_app import app


def test_reliability_settings() -> None:
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    assert conf.worker_prefetch_multiplier == 1
    assert {q.name for q in conf.task_queues} == {"validate", "train"}
    assert conf.task_routes[TASK_TRAIN] == {"queue": "train"}
    assert {q.routing_key for q in conf.task_queues} == {"validate", "train"}


def test_tasks_are_registered_by_name_and_delegate(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (tasks.validate_job.name, tasks.train_job.name) == (TASK_VALIDATE, TASK_TRAIN)
    assert {TASK_VALIDATE, TASK_TRAIN} <= set(app.tasks)
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(tasks, "context", lambda: "ctx")
    monkeypatch.setattr(runner, "validate_job", lambda ctx, job_id: calls.append(("validate", job_id)))
    monkeypatch.setattr(runner, "train_job", lambda ctx, job_id: calls.append(("train", job_id)))
    tasks.validate_job.run(job_id="job-1")
    tasks.train_job.run(job_id="job-2")
    assert calls == [("validate", "job-1"), ("train", "job-2")]


def test_shutdown_signal_asks_training_to_stop() -> None:
    from celery.signals import worker_shutting_down

    try:
        worker_shutting_down.send(sender="test", sig="TERM", how="Warm", exitcode=0)
        assert runner.SHUTDOWN.is_set()
    finally:
        runner.SHUTDOWN.clear()
