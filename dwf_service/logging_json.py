"""Structured logs: one JSON object per line, with the job id of the task being run.

``DWF_LOG_FORMAT`` picks ``json`` or ``text``; unset, it is ``json`` when ``DWF_ENV=production`` (the compose
stack) and ``text`` otherwise (``dwf serve`` on a laptop). The API enables it in ``api.main`` (the uvicorn entry
of the API container), the worker in ``worker.celery_app`` (Celery's logging signals); within a Celery task the
``job_id`` comes from a context variable set around the task (``task_prerun``/``task_postrun``), so every log line
of dwf_service.runner and dwf_core during a job carries it without changing a log call.

    {"ts": "2026-11-26T01:30:00.123Z", "level": "INFO", "logger": "dwf_service.runner",
     "message": "job … is not available", "job_id": "job-…", "task": "dwf.train"}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

job_id_var: ContextVar[str | None] = ContextVar("dwf_job_id", default=None)
task_var: ContextVar[str | None] = ContextVar("dwf_task", default=None)

# Attributes every LogRecord has (and uvicorn's color_message): anything else came with ``extra=`` and is kept.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_format() -> str:
    """``json`` or ``text`` from DWF_LOG_FORMAT / DWF_ENV (see the module docstring)."""
    wanted = os.environ.get("DWF_LOG_FORMAT", "").strip().lower()
    if wanted in ("json", "text"):
        return wanted
    return "json" if os.environ.get("DWF_ENV", "").strip().lower() == "production" else "text"


class JobContextFilter(logging.Filter):
    """Adds ``job_id`` and ``task`` (from the context variables) to every record that has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        if getattr(record, "task", None) is None:
            record.task = task_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, job_id, task, exc_info and ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None) or job_id_var.get()
        task = getattr(record, "task", None) or task_var.get()
        if job_id is not None:
            out["job_id"] = job_id
        if task is not None:
            out["task"] = task
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out and key not in ("job_id", "task") and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False)


def make_formatter(fmt: str | None = None) -> logging.Formatter:
    """The formatter for ``fmt`` (default: ``log_format()``)."""
    return JsonFormatter() if (fmt or log_format()) == "json" else logging.Formatter(_TEXT_FORMAT)


def configure_logging(fmt: str | None = None, level: int | str | None = None) -> None:
    """Route all logs (uvicorn's too) through one stderr handler on the root logger with the chosen format."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(JobContextFilter())
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("DWF_LOG_LEVEL", "INFO").upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's own handlers would print text
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


@contextlib.contextmanager
def job_context(job_id: str | None, task: str | None = None) -> Iterator[None]:
    """Log lines inside carry ``job_id`` (and ``task``)."""
    job_token = job_id_var.set(job_id)
    task_token = task_var.set(task)
    try:
        yield
    finally:
        task_var.reset(task_token)
        job_id_var.reset(job_token)


_celery_tokens: dict[str, tuple[Token[str | None], Token[str | None]]] = {}


def _task_prerun(task_id: str | None = None, task: Any = None, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    job_id = (kwargs or {}).get("job_id")
    tokens = (job_id_var.set(job_id if isinstance(job_id, str) else None), task_var.set(getattr(task, "name", None)))
    if task_id is not None:
        _celery_tokens[task_id] = tokens


def _task_postrun(task_id: str | None = None, **_: Any) -> None:
    tokens = _celery_tokens.pop(task_id, None) if task_id is not None else None
    if tokens is None:
        job_id_var.set(None)
        task_var.set(None)
        return
    try:
        task_var.reset(tokens[1])
        job_id_var.reset(tokens[0])
    except ValueError:  # set in another context (a pool thread): just clear
        job_id_var.set(None)
        task_var.set(None)


def _celery_logger_ready(logger: logging.Logger | None = None, **_: Any) -> None:
    """After Celery set up its loggers: same format and job filter on their handlers."""
    if logger is None:
        return
    for handler in logger.handlers:
        if log_format() == "json":  # text keeps Celery's own format
            handler.setFormatter(JsonFormatter())
        handler.addFilter(JobContextFilter())


def install_worker_logging() -> None:
    """Connect to Celery's signals: structured format on Celery's handlers, job id around each task."""
    from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun

    after_setup_logger.connect(_celery_logger_ready, weak=False)
    after_setup_task_logger.connect(_celery_logger_ready, weak=False)
    task_prerun.connect(_task_prerun, weak=False)
    task_postrun.connect(_task_postrun, weak=False)


__all__ = [
    "JobContextFilter",
    "JsonFormatter",
    "configure_logging",
    "install_worker_logging",
    "job_context",
    "job_id_var",
    "log_format",
]
