"""``dwf serve``: the API (uvicorn) and one real Celery worker on SQLite, a local blob folder and a SQL broker."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

import uvicorn

from dwf_service.auth import add_key, find_key, generate_key
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.migrate import upgrade_db
from dwf_service.models import DEFAULT_TENANT_NAME
from dwf_service.settings import Settings

log = logging.getLogger("dwf.serve")
WORKER_STOP_TIMEOUT_S = 30.0
CONFIG_NAME = "config.json"


def config_path(settings: Settings) -> Path:
    """Where ``dwf serve`` keeps the generated API key and URL for the CLI."""
    return settings.data_dir / CONFIG_NAME


def ensure_api_key(ctx: ServiceContext, url: str) -> str | None:
    """Register DWF_API_KEY, or reuse the key in config.json, or create one; returns a new key to show once.

    The key belongs to the tenant named "default" (created if missing); ``dwf keys create`` makes keys of others.
    """
    settings = ctx.settings
    path = config_path(settings)
    stored = json.loads(path.read_text()) if path.is_file() else {}
    with session_scope(ctx.sessions) as session:
        if settings.api_key:
            add_key(session, settings.api_key, name="DWF_API_KEY", tenant=DEFAULT_TENANT_NAME)
            new_key = None
        elif stored.get("api_key") and find_key(session, stored["api_key"]) is not None:
            new_key = None
        else:
            new_key = generate_key()
            add_key(session, new_key, name="dwf serve", tenant=DEFAULT_TENANT_NAME)
            stored["api_key"] = new_key
    stored["url"] = url
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(stored, fh, indent=2)
    os.chmod(path, 0o600)
    return new_key


def worker_command(index: int = 0) -> list[str]:
    """One Celery worker consuming both queues, one task at a time; ``index`` tells apart the node names of
    ``dwf serve --workers N``'s workers."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        "validate,train",
        "--concurrency",
        "1",
        # solo: the task runs in the worker's main process, so a warm shutdown (SIGTERM) reaches the training
        # loop, which stops at its next step and re-queues the job to resume from its checkpoint.
        "--pool",
        "solo",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "-n",
        f"dwf-embedded-{os.getpid()}-{index}@%h",
    ]


def start_worker(settings: Settings, index: int = 0) -> subprocess.Popen[bytes]:
    """Start the worker in its own session (a terminal's Ctrl-C reaches only us; we stop it with SIGTERM)."""
    env = dict(os.environ)
    env["DWF_DATA_DIR"] = str(settings.data_dir)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(worker_command(index), env=env, start_new_session=True)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL after WORKER_STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("worker did not stop in %.0f s; killing it", WORKER_STOP_TIMEOUT_S)
        proc.kill()
        proc.wait()


class _Supervisor:
    """Keeps one worker process alive until stopped."""

    def __init__(self, settings: Settings, index: int = 0) -> None:
        self.settings, self.index = settings, index
        self.proc = start_worker(settings, index)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="dwf-worker-supervisor", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        failures = 0
        while not self.stopping.wait(2.0):
            code = self.proc.poll()
            if code is None:
                failures = 0
                continue
            failures += 1
            delay = min(60.0, 2.0**failures)  # back off when the worker cannot even start
            log.warning("worker exited with %s; restarting it in %.0f s", code, delay)
            if self.stopping.wait(delay):
                return
            self.proc = start_worker(self.settings, self.index)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        stop_worker(self.proc)


class _Server(uvicorn.Server):
    """Do not re-raise SIGINT/SIGTERM after shutdown (uvicorn does): we still have to stop the worker."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve(settings: Settings, host: str, port: int, echo: object = None, workers: int = 1) -> None:
    """Run migrations, ensure an API key, start ``workers`` worker processes (one job each at a time) and serve the
    API until SIGINT/SIGTERM."""
    from api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_db(settings.database_url)
    ctx = ServiceContext.create(settings)
    url = f"http://{host}:{port}"
    new_key = ensure_api_key(ctx, url)
    if new_key is not None and callable(echo):
        echo(f"API key (shown once, also saved in {config_path(settings)}): {new_key}")
    supervisors = [_Supervisor(settings, index) for index in range(workers)]
    try:
        server = _Server(uvicorn.Config(create_app(settings, context=ctx), host=host, port=port, log_level="info"))
        server.run()
    finally:
        for supervisor in supervisors:
            supervisor.stop()
        ctx.engine.dispose()
