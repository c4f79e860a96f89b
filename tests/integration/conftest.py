"""Real backing services for the integration tier: Redis, PostgreSQL 15 and moto's S3 server.

Each session fixture starts its server as a child process of this pytest process (a free port, a temporary
directory), waits until it answers and stops it at the end; a server is started only when a test asks for it.
With pytest-xdist every worker process gets its own servers.

To reuse servers that already run (``bash scripts/services.sh start`` prints the lines), export
``DWF_TEST_REDIS_URL``, ``DWF_TEST_POSTGRES_URL`` and ``DWF_TEST_S3_ENDPOINT``; ``postgres_url`` then creates a
fresh database on that server per session and drops it afterwards.

Missing server binaries skip the tests, except on CI (``CI=true``), where they fail: CI must install them
(``scripts/test.sh`` does, with apt-get).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.service_helpers import mlp_onnx, mnist_npz

if TYPE_CHECKING:
    from dwf_service.settings import Settings

PG_BIN = Path(os.environ.get("DWF_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT_S = 30.0
# moto accepts any credentials; these keep boto3 from looking for real ones (and never reach AWS).
S3_ACCESS_KEY_ID = "testing"
S3_SECRET_ACCESS_KEY = "testing"
S3_REGION = "us-east-1"


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing(what: str) -> NoReturn:
    """Skip locally, fail on CI: the integration tier must never be skipped silently in CI."""
    hint = "run `bash scripts/services.sh start` once as root (it apt-installs them), or `bash scripts/test.sh`"
    if _on_ci():
        pytest.fail(f"{what} is missing on CI; CI must install it ({hint})", pytrace=False)
    pytest.skip(f"{what} not installed: {hint}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when pytest dies, so a killed test run leaves no servers behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class _Server:
    """A server child process owned by the fixture that started it."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM
    started_s: float = 0.0
    extra_cleanup: list[Callable[[], None]] = field(default_factory=list)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def wait_ready(self, ready: Callable[[], bool], t0: float) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if ready():
                self.started_s = time.monotonic() - t0
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not reachable after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for cleanup in self.extra_cleanup:
            cleanup()


def _spawn(name: str, argv: list[str], log: Path, **kwargs: Any) -> _Server:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, **kwargs
        )
    return _Server(name=name, proc=proc, log=log)


def _worker_suffix() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _record(config: pytest.Config, name: str, seconds: float) -> None:
    stash: dict[str, float] = config.stash.setdefault(_TIMINGS, {})
    stash[name] = seconds


_TIMINGS = pytest.StashKey[dict[str, float]]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    timings = config.stash.get(_TIMINGS, {})
    if timings:
        parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items())
        terminalreporter.write_line(f"integration services ready in: {parts}")


# ---------------------------------------------------------------------------------------------------- Redis


def _redis_ping(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a real redis-server (AOF on, noeviction, like compose)."""
    reuse = os.environ.get("DWF_TEST_REDIS_URL")
    if reuse:
        if not _redis_ping(reuse):
            pytest.fail(f"DWF_TEST_REDIS_URL={reuse} does not answer PING", pytrace=False)
        yield reuse
        return
    exe = shutil.which("redis-server")
    if exe is None:
        _missing("redis-server")
    workdir = tmp_path_factory.mktemp("redis")
    port = _free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
    argv += ["--appendonly", "yes", "--maxmemory-policy", "noeviction", "--daemonize", "no"]
    url = f"redis://127.0.0.1:{port}/0"
    t0 = time.monotonic()
    server = _spawn("redis-server", argv, workdir / "redis.log")
    try:
        server.wait_ready(lambda: _redis_ping(url), t0)
        _record(request.config, "redis", server.started_s)
        yield url
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------ PostgreSQL


def _pg_connect_ok(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(_libpq(url), connect_timeout=1) as conn:
            conn.execute("select 1")
        return True
    except psycopg.OperationalError:
        return False


def _libpq(url: str) -> str:
    """SQLAlchemy's ``postgresql+psycopg://`` URL as a libpq one."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _with_database(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


def _create_database(server_url: str, dbname: str) -> Callable[[], None]:
    import psycopg

    with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
        conn.execute(f'create database "{dbname}"')

    def drop() -> None:
        with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{dbname}" with (force)')

    return drop


def _postgres_user_kwargs(datadir: Path) -> dict[str, Any]:
    """PostgreSQL refuses to run as root: as root, run initdb/postgres as the postgres user."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        _missing("the postgres system user (apt-get install postgresql-15)")
    os.chown(datadir, pw.pw_uid, pw.pw_gid)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _sweep_stale_pg_dirs(max_age_s: float = 600.0) -> None:
    """Remove clusters a killed test run left behind (their postmaster is gone) so /tmp does not fill up."""
    now = time.time()
    for path in Path(tempfile.gettempdir()).glob("dwf-pg-*"):
        try:
            if now - path.stat().st_mtime < max_age_s:
                continue
            pidfile = path / "data" / "postmaster.pid"
            if pidfile.exists():
                pid = int(pidfile.read_text().split()[0])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 0)
                    continue  # still running: someone else's live cluster
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError, IndexError):
            continue


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """``postgresql+psycopg://postgres@127.0.0.1:PORT/DB``: a fresh, empty database on a real PostgreSQL 15."""
    dbname = f"dwf_test_{_worker_suffix()}_{uuid.uuid4().hex[:8]}"
    reuse = os.environ.get("DWF_TEST_POSTGRES_URL")
    if reuse:
        if not _pg_connect_ok(reuse):
            pytest.fail(f"DWF_TEST_POSTGRES_URL={reuse} does not accept connections", pytrace=False)
        drop = _create_database(reuse, dbname)
        try:
            yield _with_database(reuse, dbname)
        finally:
            drop()
        return
    initdb, postgres = PG_BIN / "initdb", PG_BIN / "postgres"
    if not (initdb.exists() and postgres.exists()):
        _missing(f"PostgreSQL 15 ({initdb})")
    _sweep_stale_pg_dirs()
    # Not under pytest's tmp dirs: those are 0700 and root-owned, unreachable for the postgres user.
    base = Path(tempfile.mkdtemp(prefix="dwf-pg-"))
    try:
        run_as = _postgres_user_kwargs(base)
        t0 = time.monotonic()
        datadir = base / "data"
        subprocess.run(
            [str(initdb), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            **run_as,
        )
        port = _free_port()
        argv = [str(postgres), "-D", str(datadir), "-p", str(port), "-k", str(base)]
        for setting in ("listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off", "full_page_writes=off"):
            argv += ["-c", setting]
        server = _spawn("postgres", argv, base / "postgres.log", **run_as)
        server.stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, exit in ~0.1 s
        server_url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        try:
            server.wait_ready(lambda: _pg_connect_ok(server_url), t0)
            drop = _create_database(server_url, dbname)
            _record(request.config, "postgres", time.monotonic() - t0)
            try:
                yield _with_database(server_url, dbname)
            finally:
                drop()
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- S3


def _s3_up(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=0.5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _moto_argv() -> list[str] | None:
    try:
        import flask  # noqa: F401  (moto's server mode needs the [server] extra)
        import moto.server  # noqa: F401
    except ImportError:
        exe = shutil.which("moto_server")
        return [exe] if exe else None
    return [sys.executable, "-m", "moto.server"]


@pytest.fixture(scope="session")
def s3_endpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT``: moto's S3 server, a real HTTP S3 endpoint for boto3 (in memory)."""
    reuse = os.environ.get("DWF_TEST_S3_ENDPOINT")
    if reuse:
        if not _s3_up(reuse):
            pytest.fail(f"DWF_TEST_S3_ENDPOINT={reuse} does not answer", pytrace=False)
        yield reuse.rstrip("/")
        return
    argv = _moto_argv()
    if argv is None:
        _missing("moto server mode (pip install 'moto[server]', part of the dev extra)")
    workdir = tmp_path_factory.mktemp("moto")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    server = _spawn("moto_server", [*argv, "-p", str(port), "-H", "127.0.0.1"], workdir / "moto.log")
    try:
        server.wait_ready(lambda: _s3_up(endpoint), t0)
        _record(request.config, "s3", server.started_s)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str) -> Any:
    """A boto3 S3 client for ``s3_endpoint`` (path-style addressing, dummy credentials)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


@pytest.fixture
def s3_bucket(s3_client: Any) -> Iterator[str]:
    """A fresh, empty bucket per test; emptied and deleted afterwards."""
    name = f"dwf-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for upload in s3_client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            s3_client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        paginator = s3_client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            for obj in page.get("Contents", []):
                s3_client.delete_object(Bucket=name, Key=obj["Key"])
        s3_client.delete_bucket(Bucket=name)


# ------------------------------------------------------------- the deployed stack's inputs and connections


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2000/500 MNIST images as .npz and a LeNet-300-100-like ONNX MLP."""
    d = tmp_path_factory.mktemp("stack-inputs")
    return {"data": mnist_npz(d / "mnist.npz", 2000, 500), "model": mlp_onnx(d / "lenet300.onnx")}


@pytest.fixture
def services(redis_url: str, postgres_url: str, s3_endpoint: str, s3_bucket: str) -> dict[str, str]:
    """The DWF_* variables that point the service at the real backing services."""
    return {
        "DWF_DATABASE_URL": postgres_url,
        "DWF_BROKER_URL": redis_url,
        "DWF_S3_ENDPOINT_URL": s3_endpoint,
        "DWF_S3_BUCKET": s3_bucket,
    }


@pytest.fixture
def engine(postgres_url: str) -> Iterator[sa.Engine]:
    """An engine on the session's PostgreSQL database."""
    eng = sa.create_engine(postgres_url, pool_pre_ping=True)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[str]:
    """A database of this test's own on the session's PostgreSQL (other tests expect theirs empty)."""
    url = make_url(postgres_url)
    name = f"dwf_ckpt_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def s3_settings(data_dir: Path, s3_endpoint: str, bucket: str, **overrides: Any) -> Settings:
    """Service settings on moto's S3 server (``bucket``) with ``data_dir`` for the rest; ``overrides`` on top
    (``database_url`` for PostgreSQL, else SQLite in ``data_dir``)."""
    from dwf_service.settings import Settings

    values: dict[str, Any] = {
        "data_dir": data_dir,
        "storage": "s3",
        "s3_endpoint_url": s3_endpoint,
        "s3_bucket": bucket,
        "s3_region": S3_REGION,
        "s3_access_key_id": S3_ACCESS_KEY_ID,
        "s3_secret_access_key": S3_SECRET_ACCESS_KEY,
    }
    return Settings(**(values | overrides))
