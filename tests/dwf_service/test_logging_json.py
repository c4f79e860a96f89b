"""Structured JSON logs with job ids (dwf_service.logging_json)."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

import pytest

from dwf_service import logging_json
from dwf_service.logging_json import JobContextFilter, JsonFormatter, job_context, job_id_var, log_format


def _logger(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(JobContextFilter())
    logger = logging.getLogger("dwf.test.logging_json")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_lines_are_json_with_the_job_id_of_the_context() -> None:
    stream = io.StringIO()
    log = _logger(stream)
    log.info("outside")
    with job_context("job-123", task="dwf.train"):
        log.warning("epoch %d done", 3, extra={"epoch": 3})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("crashed")
    log.info("after")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["outside", "epoch 3 done", "crashed", "after"]
    assert "job_id" not in lines[0] and "job_id" not in lines[3]
    assert lines[1]["job_id"] == lines[2]["job_id"] == "job-123" and lines[1]["task"] == "dwf.train"
    assert lines[1]["level"] == "WARNING" and lines[1]["logger"] == "dwf.test.logging_json"
    assert lines[1]["epoch"] == 3 and lines[1]["ts"].endswith("Z")
    assert "ValueError: boom" in lines[2]["exc_info"]


def test_celery_task_signals_set_and_clear_the_job_id() -> None:
    task = SimpleNamespace(name="dwf.validate")
    logging_json._task_prerun(task_id="t1", task=task, kwargs={"job_id": "job-abc"})
    assert job_id_var.get() == "job-abc" and logging_json.task_var.get() == "dwf.validate"
    logging_json._task_postrun(task_id="t1")
    assert job_id_var.get() is None and logging_json.task_var.get() is None


@pytest.mark.parametrize(
    ("fmt", "env", "expected"),
    [("", "production", "json"), ("", "dev", "text"), ("text", "production", "text"), ("JSON", "dev", "json")],
)
def test_format_from_the_environment(monkeypatch: pytest.MonkeyPatch, fmt: str, env: str, expected: str) -> None:
    monkeypatch.setenv("DWF_LOG_FORMAT", fmt)
    monkeypatch.setenv("DWF_ENV", env)
    assert log_format() == expected
