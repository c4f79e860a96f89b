"""End to end in the deployed mode: Redis (broker), PostgreSQL (database), S3 (moto, blob store).

The real API (``uvicorn api.main:app``, the API container's command, after ``python -m dwf_service.migrate``, its
entrypoint's first step) and a real Celery worker process (``celery -A worker.celery_app worker``) run as
subprocesses configured only through ``DWF_*`` variables, each with its own local data dir. The test uploads an
MNIST subset and an ONNX MLP, trains a DWF job, downloads the artifacts, recomputes the reported accuracy and
sparsity, and checks that every byte landed where it belongs: rows in PostgreSQL, objects in the S3 bucket,
task queues in Redis. A second test SIGKILLs the worker mid-training and restarts it: the lease and the API's
reconciler bring the job back, and it finishes exactly once, resuming from its checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa

from dwf_service.models import Artifact, File, Job, JobEvent, JobResult
from tests.service_helpers import (
    ARTIFACT_NAMES,
    check_reported_results,
    download_artifacts,
    upload,
    wait_for_job,
)

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "dwf_stack-e2e-" + "k" * 24
S3_CREDENTIALS = {
    "DWF_S3_ACCESS_KEY_ID": "testing",
    "DWF_S3_SECRET_ACCESS_KEY": "testing",
    "DWF_S3_REGION": "us-east-1",
}
pytestmark = pytest.mark.slow


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when pytest dies, so a killed test run leaves no processes behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


class Stack:
    """The API and one worker as subprocesses against the given Redis, PostgreSQL and S3 bucket."""

    def __init__(self, root: Path, services: dict[str, str], **overrides: str) -> None:
        self.root = root
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DWF_")}
        self.env = {
            **inherited,
            "PYTHONPATH": str(ROOT),
            **services,
            **S3_CREDENTIALS,
            "DWF_STORAGE": "s3",
            "DWF_API_KEY": API_KEY,
            "DWF_RECONCILE_SECONDS": "2",
            "DWF_MAX_UPLOAD_BYTES": str(50 * 2**20),
            **overrides,
        }
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.workers_started = 0
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)

    def _spawn(self, name: str, argv: list[str], data_dir: Path) -> subprocess.Popen[bytes]:
        env = {**self.env, "DWF_DATA_DIR": str(data_dir)}
        with open(self.root / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip

    def migrate(self) -> None:
        """``python -m dwf_service.migrate``, as the API container's entrypoint runs it."""
        env = {**self.env, "DWF_DATA_DIR": str(self.root / "api")}
        done = subprocess.run(
            [sys.executable, "-m", "dwf_service.migrate"], cwd=ROOT, env=env, capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]

    def start_api(self) -> None:
        argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(self.port)]
        self.api = self._spawn("api", argv, self.root / "api")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.api.poll() is None, _tail(self.root / "api.log")
            with contextlib.suppress(httpx.TransportError):
                resp = httpx.get(f"{self.url}/readyz", timeout=5)
                if resp.status_code == 200:
                    assert resp.json()["checks"] == {"database": "ok", "storage": "ok", "broker": "ok"}
                    return
            time.sleep(0.2)
        raise AssertionError("the API did not become ready:\n" + _tail(self.root / "api.log"))

    def start_worker(self) -> None:
        """One Celery worker, solo pool: the task runs in the process that a SIGKILL hits."""
        self.workers_started += 1
        argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "validate,train"]
        argv += ["--concurrency", "1", "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        argv += ["-n", f"stack-{uuid.uuid4().hex[:8]}-{self.workers_started}@%h"]
        self.worker = self._spawn("worker", argv, self.root / "worker")

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(timeout=10)

    def stop(self) -> None:
        self.client.close()
        for proc in (self.api, self.worker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.api, self.worker):
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        return wait_for_job(self.client, job_id, timeout, self.logs, poll=0.5)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.client.get(f"/v1/jobs/{job_id}/events?limit=100").json()["data"]
        return data

    def logs(self) -> str:
        return f"--- api.log\n{_tail(self.root / 'api.log')}\n--- worker.log\n{_tail(self.root / 'worker.log')}"


def _stack(tmp_path: Path, services: dict[str, str], **overrides: str) -> Stack:
    stack = Stack(tmp_path, services, **overrides)
    stack.migrate()
    stack.start_api()
    stack.start_worker()
    return stack


def _s3_objects(s3_client: Any, bucket: str) -> dict[str, bytes]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    return {key: s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def test_dwf_job_end_to_end_on_redis_postgres_s3(
    services: dict[str, str],
    inputs: dict[str, Path],
    engine: sa.Engine,
    s3_client: Any,
    redis_url: str,
    tmp_path: Path,
) -> None:
    stack = _stack(tmp_path, services)
    try:
        model_id, data_id = (
            upload(stack.client, inputs["model"], "model"),
            upload(stack.client, inputs["data"], "dataset"),
        )
        request = {
            "model": {"file_id": model_id},
            "dataset": {"file_id": data_id},
            "method": {"type": "dwf", "depth": 3, "epochs": 2},
        }
        idem = {"Idempotency-Key": f"stack-{uuid.uuid4().hex}"}
        created = stack.client.post("/v1/jobs", json=request, headers=idem)
        assert created.status_code in (200, 201), created.text
        job = stack.wait(created.json()["id"], timeout=300)
        assert job["status"] == "succeeded", f"{job}\n{stack.logs()}"
        out = tmp_path / "out"
        out.mkdir()
        artifacts = download_artifacts(stack.client, job["id"], out)
        check_reported_results(job, inputs["model"], inputs["data"], out)
        assert sum(e["type"] == "metrics" for e in stack.events(job["id"])) == 2
        assert stack.client.post("/v1/jobs", json=request, headers=idem).json()["id"] == job["id"]
    finally:
        stack.stop()

    # PostgreSQL holds the job, its files, artifacts and the sparse weights (queried directly, not via the API).
    with engine.connect() as conn:
        row = conn.execute(sa.select(Job).where(Job.id == job["id"])).one()
        assert (row.status, row.attempts, row.lease_owner) == ("succeeded", 1, None)
        assert (row.model_file_id, row.dataset_file_id) == (model_id, data_id)
        result = conn.execute(sa.select(JobResult).where(JobResult.job_id == job["id"])).one()
        assert result.sparse_weights == (out / "model.sparse.safetensors").read_bytes()
        assert result.metrics["test_accuracy"] == job["metrics"]["test_accuracy"]
        stored = {a.name: a for a in conn.execute(sa.select(Artifact).where(Artifact.job_id == job["id"])).all()}
        files = {f.id: f for f in conn.execute(sa.select(File).where(File.id.in_([model_id, data_id]))).all()}
    assert stored.keys() == ARTIFACT_NAMES and files.keys() == {model_id, data_id}
    assert {a["name"]: a["sha256"] for a in artifacts} == {name: a.sha256 for name, a in stored.items()}

    # The S3 bucket holds the two uploads, the artifacts, byte for byte, and the job's last training checkpoint (kept
    # for DWF_CHECKPOINT_RETENTION_SECONDS after the job ended, so a continuation or a post-mortem can use it).
    objects = _s3_objects(s3_client, services["DWF_S3_BUCKET"])
    expected_keys = {a.storage_key for a in stored.values()} | {f.storage_key for f in files.values()}
    assert row.checkpoint_key is not None and row.checkpoint_key.startswith(f"jobs/{job['id']}/checkpoints/")
    assert objects.keys() == expected_keys | {row.checkpoint_key}
    for name, art in stored.items():
        assert objects[art.storage_key] == (out / name).read_bytes()
        assert hashlib.sha256(objects[art.storage_key]).hexdigest() == art.sha256
    assert objects[files[model_id].storage_key] == inputs["model"].read_bytes()
    assert objects[files[data_id].storage_key] == inputs["data"].read_bytes()
    # Nothing fell back to the local blob folder of either process.
    assert not (tmp_path / "api" / "blobs").exists() and not (tmp_path / "worker" / "blobs").exists()

    # The tasks went through Redis: kombu declared both queues there.
    client = redis.Redis.from_url(redis_url)
    try:
        bindings = {key.decode() for key in client.scan_iter("_kombu.binding.*")}
    finally:
        client.close()
    assert {"_kombu.binding.validate", "_kombu.binding.train"} <= bindings


def test_killed_worker_job_finishes_once_after_restart(
    services: dict[str, str], inputs: dict[str, Path], engine: sa.Engine, tmp_path: Path
) -> None:
    """SIGKILL of the worker mid-training: the message stays unacked in Redis until its (long) visibility timeout,
    so the lease expiring and the API's reconciler re-enqueueing the job is what brings it back."""
    stack = _stack(tmp_path, services, DWF_LEASE_SECONDS="4", DWF_HEARTBEAT_SECONDS="1", DWF_RECONCILE_SECONDS="1")
    try:
        model_id, data_id = (
            upload(stack.client, inputs["model"], "model"),
            upload(stack.client, inputs["data"], "dataset"),
        )
        request = {"model": {"file_id": model_id}, "dataset": {"file_id": data_id}, "method": {"epochs": 4}}
        job_id = stack.client.post("/v1/jobs", json=request).json()["id"]
        deadline = time.monotonic() + 180
        while not any(e["type"] == "metrics" for e in stack.events(job_id)):
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.2)
        stack.kill_worker()
        stack.start_worker()
        job = stack.wait(job_id, timeout=300)
        assert job["status"] == "succeeded", f"{job}\n{stack.logs()}"
        assert job["attempts"] == 2 and job["metrics"]["resumed_from_epoch"] >= 1
        events = stack.events(job_id)
        assert any("lease expired" in e["message"] for e in events)
        assert sum(e["message"].startswith("training started") for e in events) == 2
    finally:
        stack.stop()

    with engine.connect() as conn:
        row = conn.execute(sa.select(Job).where(Job.id == job_id)).one()
        assert (row.status, row.attempts) == ("succeeded", 2)
        assert conn.execute(sa.select(sa.func.count()).where(JobResult.job_id == job_id)).scalar_one() == 1
        names = conn.execute(sa.select(Artifact.name).where(Artifact.job_id == job_id)).scalars().all()
        assert sorted(names) == sorted(ARTIFACT_NAMES)
        finished = conn.execute(sa.select(JobEvent.message).where(JobEvent.job_id == job_id)).scalars().all()
    assert finished.count("job succeeded") == 1
