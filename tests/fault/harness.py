"""Process harness of the fault tier: Redis, PostgreSQL, the API and Celery workers as owned process groups.

Every process is started in a new session (its own process group, pgid == pid) and recorded; the harness signals
only those groups, never by name. ``close()`` stops every group it started (SIGTERM, then SIGKILL). Children also
get PR_SET_PDEATHSIG, so a killed pytest leaves nothing behind.

The API (``uvicorn api.main:app``) and the workers (``celery -A worker.celery_app worker``, prefork, concurrency 1,
prefetch 1) share one local data dir (local blob store) and are configured only through ``DWF_*`` variables, with
the test overrides of reliability-tests.md §6 (short lease, heartbeat and reconciler period).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tests.integration.conftest import (
    PG_BIN,
    _create_database,
    _die_with_parent,
    _free_port,
    _pg_connect_ok,
    _postgres_user_kwargs,
    _redis_ping,
)

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "dwf_fault-tier-" + "k" * 24
TERMINAL = ("succeeded", "failed", "cancelled")
# reliability-tests.md §6 test overrides, scaled for a 2-core box: jobs recover from a lost worker in seconds.
BASE_ENV = {
    "DWF_STORAGE": "local",
    "DWF_API_KEY": API_KEY,
    "DWF_LEASE_SECONDS": "5",
    "DWF_HEARTBEAT_SECONDS": "1",
    "DWF_RECONCILE_SECONDS": "1",
    "DWF_REQUEUE_AFTER_SECONDS": "20",
    "DWF_MAX_ATTEMPTS": "3",
    "DWF_REDIS_VISIBILITY_TIMEOUT": "60",
    "DWF_TASK_SOFT_TIME_LIMIT": "30",
    "DWF_TASK_TIME_LIMIT": "40",
    "DWF_WORKER_SOFT_SHUTDOWN_TIMEOUT": "30",
    "DWF_MAX_UPLOAD_BYTES": str(50 * 2**20),
    "DWF_DEVICE": "cpu",
    "DWF_QUOTA_MAX_ACTIVE_JOBS": "0",  # the fault tier submits bursts of jobs; quotas are tested elsewhere
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _group_leader(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        return os.getpgid(pid) == pid
    return False


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    kids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                kids.append(int(entry.name))
    return sorted(kids)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 when it is gone)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int, *, with_children: bool = True) -> float:
    """utime+stime of ``pid`` (plus its reaped children's) in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    """A process the harness started, leader of its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else "(no log)"


@dataclass
class Harness:
    """Owns every process of one fault test; all state lives under ``root``."""

    root: Path
    pg_base: Path
    pg_port: int
    procs: list[Proc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    redis_port: int = 0
    api_port: int = 0
    database_url: str = ""
    _engine: sa.Engine | None = None
    api: Proc | None = None
    redis: Proc | None = None
    postgres: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    redis_appendonly: bool = True

    # ------------------------------------------------------------------------------------------- processes

    def spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, **kwargs: Any) -> Proc:
        """Start ``argv`` as the leader of a new process group and record it."""
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=kwargs.pop("cwd", ROOT),
                env=env, start_new_session=True, preexec_fn=_die_with_parent, **kwargs,
            )  # fmt: skip
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is in a process group this harness started (a leader or one of its children)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            return any(os.getpgid(pid) == p.pid for p in self.procs if p.alive())
        return False

    def signal_pid(self, pid: int, sig: int) -> None:
        """Signal one process, only if it belongs to a group this harness started."""
        assert self.owns(pid), f"pid {pid} was not started by this harness"
        os.kill(pid, sig)

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal ``proc``'s whole group, wait for the leader; SIGKILL the group after ``timeout``."""
        if proc.alive() and _group_leader(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait(timeout=10)
        self._reap_group(proc.pid)
        return proc.popen.returncode

    @staticmethod
    def _reap_group(pgid: int) -> None:
        """SIGKILL members of the group ``pgid`` that outlived their leader (e.g. an orphaned pool child)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def close(self) -> None:
        """Stop every process this harness started (workers, API, Redis, then PostgreSQL)."""
        if self._engine is not None:
            self._engine.dispose()
        order = sorted(self.procs, key=lambda p: ("worker", "api", "redis", "postgres").index(p.name.split("-")[0]))
        for proc in order:
            self.stop(proc, signal.SIGINT if proc.name.startswith("postgres") else signal.SIGTERM, timeout=15)

    # ----------------------------------------------------------------------------------------------- Redis

    def start_redis(self) -> None:
        """redis-server on a fixed port with its AOF under root (a restart finds the queued messages again)."""
        import shutil

        exe = shutil.which("redis-server")
        assert exe is not None, "redis-server is not installed (scripts/fault.sh installs it)"
        if not self.redis_port:
            self.redis_port = _free_port()
        workdir = self.root / "redis"
        workdir.mkdir(exist_ok=True)
        argv = [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
        argv += ["--appendonly", "yes" if self.redis_appendonly else "no", "--maxmemory-policy", "noeviction"]
        argv += ["--daemonize", "no"]
        self.redis = self.spawn("redis", argv)
        self._wait(lambda: _redis_ping(self.broker_url), 20, "redis-server", self.redis)

    def stop_redis(self) -> None:
        """``SHUTDOWN`` semantics: SIGTERM makes redis-server flush the AOF and exit."""
        assert self.redis is not None
        self.stop(self.redis, signal.SIGTERM)

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    # ------------------------------------------------------------------------------------------ PostgreSQL

    def start_postgres(self) -> None:
        """The session's cluster (initdb'd by the fixture) on its fixed port, as the postgres user when root."""
        argv = [str(PG_BIN / "postgres"), "-D", str(self.pg_base / "data"), "-p", str(self.pg_port)]
        argv += ["-k", str(self.pg_base)]
        for setting in ("listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off", "full_page_writes=off"):
            argv += ["-c", setting]
        self.postgres = self.spawn("postgres", argv, cwd=self.pg_base, **_postgres_user_kwargs(self.pg_base))
        self._wait(lambda: _pg_connect_ok(self.server_url), 30, "postgres", self.postgres)

    def stop_postgres(self) -> None:
        """``pg_ctl stop -m fast``: SIGINT to the postmaster."""
        assert self.postgres is not None
        self.stop(self.postgres, signal.SIGINT)

    @property
    def server_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/postgres"

    def create_database(self) -> None:
        name = f"dwf_fault_{uuid.uuid4().hex[:10]}"
        _create_database(self.server_url, name)
        self.database_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/{name}"

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(self.database_url, pool_pre_ping=True)
        return self._engine

    # ------------------------------------------------------------------------------------- API and workers

    def service_env(self, **overrides: str) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DWF_")}
        env = {**inherited, "PYTHONPATH": str(ROOT), **BASE_ENV, **self.env}
        env.update(DWF_DATABASE_URL=self.database_url, DWF_BROKER_URL=self.broker_url)
        env["DWF_DATA_DIR"] = str(self.root / "data")
        env.update(overrides)
        return env

    def migrate(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "dwf_service.migrate"], cwd=ROOT, env=self.service_env(), capture_output=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=timeout)

    def start_api(self) -> None:
        self.api_port = self.api_port or _free_port()
        argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(self.api_port)]
        self.api = self.spawn("api", argv, env=self.service_env())

        def ready() -> bool:
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
            return False

        self._wait(ready, 90, "the API", self.api)

    def start_worker(self, *, wait: bool = True, **overrides: str) -> Proc:
        """One prefork worker (concurrency 1, prefetch 1) consuming both queues; ``overrides``: DWF_* variables."""
        return self.start_worker_env(overrides, wait=wait)

    def start_worker_env(self, overrides: dict[str, str], *, wait: bool = True) -> Proc:
        """``start_worker`` with the variables as a dict."""
        n = len(self.workers) + 1
        argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "validate,train"]
        argv += ["--pool", "prefork", "--concurrency", "1", "--prefetch-multiplier", "1", "--loglevel", "INFO"]
        argv += ["--without-gossip", "--without-mingle", "-n", f"fault{n}-{uuid.uuid4().hex[:6]}@%h"]
        worker = self.spawn(f"worker-{n}", argv, env=self.service_env(**overrides))
        self.workers.append(worker)
        if wait:
            self._wait(lambda: "ready." in worker.tail(100_000), 90, "the worker", worker)
        return worker

    @staticmethod
    def _wait(ready: Callable[[], bool], timeout: float, what: str, proc: Proc) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.alive(), f"{what} exited with {proc.popen.returncode}:\n{proc.tail()}"
            if ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"{what} not ready in {timeout} s:\n{proc.tail()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}.log (pid {p.pid})\n{p.tail(3000)}" for p in self.procs if p.name != "postgres")

    # ---------------------------------------------------------------------------------------------- jobs

    def upload(self, client: httpx.Client, path: Path, purpose: str) -> str:
        with open(path, "rb") as fh:
            resp = client.post("/v1/files", files={"file": (path.name, fh)}, data={"purpose": purpose})
        assert resp.status_code == 200, resp.text
        return str(resp.json()["id"])

    def jobs(self) -> list[dict[str, Any]]:
        """job id, status, attempts, error code, lease owner and result-row count of every job, oldest first."""
        query = sa.text(
            "select j.id, j.status, j.attempts, j.error_code, j.lease_owner, "
            "(select count(*) from job_results r where r.job_id = j.id) as results "
            "from jobs j order by j.id"
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def job(self, job_id: str) -> dict[str, Any]:
        return next(j for j in self.jobs() if j["id"] == job_id)

    def table(self, title: str) -> str:
        """The final job-state table every fault test prints (reliability-tests.md §6)."""
        rows = self.jobs()
        lines = [
            f"== {title}: {len(rows)} jobs",
            f"{'job id':<32} {'status':<17} {'attempts':>8} {'results':>7}  error",
        ]
        for r in rows:
            lines.append(
                f"{r['id']:<32} {r['status']:<17} {r['attempts']:>8} {r['results']:>7}  {r['error_code'] or ''}"
            )
        text = "\n".join(lines)
        print(text)
        (self.root.parent / "fault-tables.txt").open("a").write(text + "\n")
        return text

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> float:
        """Poll ``check`` until true; returns the seconds it took; fails with the logs."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(sa.exc.OperationalError):
                if check():
                    return time.monotonic() - t0
            time.sleep(poll)
        raise AssertionError(f"{what}: not within {timeout} s\n{self.table('timeout')}\n{self.logs()}")

    def wait_terminal(self, job_ids: list[str], timeout: float) -> float:
        def done() -> bool:
            states = {j["id"]: j["status"] for j in self.jobs()}
            return all(states.get(i) in TERMINAL for i in job_ids)

        return self.wait_until(done, timeout, f"{len(job_ids)} jobs terminal")

    def running_child(self, job_id: str) -> int:
        """The pool child running ``job_id``: the pid in its lease owner (host:pid:run), checked to be ours."""
        owner = self.job(job_id)["lease_owner"]
        assert owner, f"{job_id} holds no lease"
        pid = int(owner.split(":")[1])
        assert self.owns(pid), f"lease owner pid {pid} is not one of the harness's processes"
        return pid


@contextlib.contextmanager
def sampling(interval: float, sample: Callable[[], None]) -> Iterator[None]:
    """Call ``sample`` every ``interval`` seconds in a thread while the block runs."""
    import threading

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(Exception):
                sample()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
