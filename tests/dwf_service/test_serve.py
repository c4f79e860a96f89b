"""``dwf serve`` pieces: the API key bootstrap and the worker command line."""

from __future__ import annotations

import json
import stat

from dwf_service.auth import find_key
from dwf_service.context import ServiceContext
from dwf_service.serve import config_path, ensure_api_key, worker_command


def test_generated_key_is_shown_once_and_saved_private(ctx: ServiceContext) -> None:
    key = ensure_api_key(ctx, "http://127.0.0.1:8000")
    assert key is not None and key.startswith("dwf_")
    path = config_path(ctx.settings)
    assert json.loads(path.read_text()) == {"api_key": key, "url": "http://127.0.0.1:8000"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_api_key(ctx, "http://127.0.0.1:9000") is None  # a restart reuses it
    with ctx.sessions() as session:
        assert find_key(session, key) is not None


def test_dwf_api_key_is_honoured_and_not_written(ctx: ServiceContext) -> None:
    ctx.settings.api_key = "dwf_from-the-environment-0123456789"
    assert ensure_api_key(ctx, "http://h:1") is None
    assert "api_key" not in json.loads(config_path(ctx.settings).read_text())
    with ctx.sessions() as session:
        assert find_key(session, "dwf_from-the-environment-0123456789") is not None


def test_worker_consumes_both_queues_one_task_at_a_time() -> None:
    cmd = worker_command()
    assert cmd[cmd.index("-A") + 1] == "worker.celery_app"
    assert cmd[cmd.index("-Q") + 1] == "validate,train" and cmd[cmd.index("--concurrency") + 1] == "1"
