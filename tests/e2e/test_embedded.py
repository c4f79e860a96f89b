"""End to end in embedded mode: a real ``dwf serve`` process (uvicorn + one Celery worker on SQLite and a SQL broker).

Upload an MNIST subset and an ONNX MLP, train a DWF job, download the artifacts and recompute the reported
accuracy and sparsity; a bad model fails validation within seconds; a restart keeps jobs and files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service_helpers import (
    check_reported_results,
    download_artifacts,
    mlp_onnx,
    mnist_npz,
    upload,
    wait_for_job,
    wait_until_ready,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class Server:
    """A ``dwf serve`` subprocess on a free port with its own data dir."""

    def __init__(self, data_dir: Path, *args: str, **env: str) -> None:
        self.data_dir, self.args, self.env = data_dir, args, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "serve.log"

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "DWF_RECONCILE_SECONDS": "2", "PYTHONPATH": str(ROOT), **self.env}
        env.pop("DWF_API_KEY", None)
        cmd = [
            sys.executable,
            "-m",
            "dwf_service.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until_ready(self.url, self.proc, self.log)
        key = json.loads((self.data_dir / "config.json").read_text())["api_key"]
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        assert self.proc is not None
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        return wait_for_job(self.client, job_id, timeout, lambda: self.log.read_text()[-3000:])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One running service for the module."""
    srv = Server(tmp_path_factory.mktemp("serve") / "data")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2000/500 MNIST images as .npz, a LeNet-300-100-like ONNX MLP, and one with 5 outputs."""
    d = tmp_path_factory.mktemp("inputs")
    return {
        "data": mnist_npz(d / "mnist.npz", 2000, 500),
        "model": mlp_onnx(d / "lenet300.onnx"),
        "narrow": mlp_onnx(d / "narrow.onnx", hidden=(16,), classes=5),
    }


def _upload(server: Server, path: Path, purpose: str) -> str:
    return upload(server.client, path, purpose)


def test_dwf_job_end_to_end(server: Server, inputs: dict[str, Path], tmp_path: Path) -> None:
    # How long this takes is measured by benchmarks/service_small_job.py, not asserted here.
    model_id, data_id = _upload(server, inputs["model"], "model"), _upload(server, inputs["data"], "dataset")
    request = {
        "model": {"file_id": model_id},
        "dataset": {"file_id": data_id},
        "method": {"type": "dwf", "depth": 3, "epochs": 2},
    }
    job = server.client.post("/v1/jobs", json=request, headers={"Idempotency-Key": "e2e-1"}).json()
    job = server.wait(job["id"], timeout=120)
    assert job["status"] == "succeeded", job
    download_artifacts(server.client, job["id"], tmp_path)
    check_reported_results(job, inputs["model"], inputs["data"], tmp_path)

    events = server.client.get(f"/v1/jobs/{job['id']}/events?limit=100").json()["data"]
    assert sum(e["type"] == "metrics" for e in events) == 2
    assert server.client.post("/v1/jobs", json=request, headers={"Idempotency-Key": "e2e-1"}).json()["id"] == job["id"]


def test_validation_failure_within_seconds(server: Server, inputs: dict[str, Path]) -> None:
    model_id, data_id = _upload(server, inputs["narrow"], "model"), _upload(server, inputs["data"], "dataset")
    request = {"model": {"file_id": model_id}, "dataset": {"file_id": data_id}, "method": {"depth": 3, "epochs": 2}}
    job = server.client.post("/v1/jobs", json=request).json()
    job = server.wait(job["id"], timeout=30)
    # Failed by the validation task, before any training started.
    assert job["status"] == "failed" and job["started_at"] is None
    assert job["error"]["param"] == "model" and job["error"]["code"] == "output_shape_mismatch"


def test_restart_keeps_jobs_and_files(server: Server) -> None:
    before = server.client.get("/v1/jobs").json()["data"]
    files = server.client.get("/v1/files").json()["data"]
    assert before and files
    assert server.stop() == 0
    server.start()
    after = server.client.get("/v1/jobs").json()["data"]
    assert [(j["id"], j["status"]) for j in after] == [(j["id"], j["status"]) for j in before]
    assert server.client.get("/v1/files").json()["data"] == files


def test_killed_worker_job_resumes_from_its_checkpoint(inputs: dict[str, Path], tmp_path: Path) -> None:
    """kill -9 of the whole worker loses the SQL broker's message; the lease + reconciler bring the job back."""
    srv = Server(tmp_path / "data", DWF_LEASE_SECONDS="4", DWF_HEARTBEAT_SECONDS="1", DWF_RECONCILE_SECONDS="1")
    srv.start()
    try:
        model_id, data_id = _upload(srv, inputs["model"], "model"), _upload(srv, inputs["data"], "dataset")
        request = {"model": {"file_id": model_id}, "dataset": {"file_id": data_id}, "method": {"epochs": 4}}
        job_id = srv.client.post("/v1/jobs", json=request).json()["id"]
        deadline = time.monotonic() + 60
        while not any(
            e["type"] == "metrics" for e in srv.client.get(f"/v1/jobs/{job_id}/events?limit=100").json()["data"]
        ):
            assert time.monotonic() < deadline, srv.log.read_text()[-3000:]
            time.sleep(0.2)
        assert srv.proc is not None
        children = Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
        assert len(children) == 1
        os.kill(int(children[0]), signal.SIGKILL)
        job = srv.wait(job_id, timeout=150)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2 and job["metrics"]["resumed_from_epoch"] >= 1
        events = srv.client.get(f"/v1/jobs/{job_id}/events?limit=100").json()["data"]
        assert any("lease expired" in e["message"] for e in events)
    finally:
        srv.stop()


def test_a_sweep_runs_its_children_on_two_workers_and_stores_its_frontier(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    """``dwf serve --workers 2`` and a 2-child sweep: both children are running at the same moment, under two
    workers, and once both ended the worker's finalize task stores frontier.json/.png.

    The children sleep 8 s when their training starts (the test-only fault of dwf_service.runner, keyed by seed; a
    sweep's children share its seed), so with one worker the second could only start after the first had finished.
    """
    srv = Server(tmp_path / "data", "--workers", "2", DWF_TEST_FAULTS="71=sleep:8")
    srv.start()
    try:
        model_id, data_id = _upload(srv, inputs["model"], "model"), _upload(srv, inputs["data"], "dataset")
        sweep = srv.client.post(
            "/v1/sweeps",
            json={
                "model": {"file_id": model_id},
                "dataset": {"file_id": data_id},
                "method": {"epochs": 1},
                "seed": 71,
                "grid": {"target_sparsity": [0.5, 0.9]},
            },
        ).json()
        ids = [c["job_id"] for c in sweep["children"]]
        deadline, both_running = time.monotonic() + 90, False
        while not both_running:
            assert time.monotonic() < deadline, srv.log.read_text()[-3000:]
            statuses = [srv.client.get(f"/v1/jobs/{i}").json()["status"] for i in ids]
            both_running = statuses == ["running", "running"]
            time.sleep(0.2)
        children = [srv.wait(job_id, timeout=120) for job_id in ids]
        assert [c["status"] for c in children] == ["succeeded", "succeeded"]
        deadline = time.monotonic() + 60
        while (out := srv.client.get(f"/v1/sweeps/{sweep['id']}").json())["status"] != "succeeded":
            assert time.monotonic() < deadline and out["status"] == "finalizing", out
            time.sleep(0.2)
        assert [c["compression_ratio"] for c in out["children"]] == [
            c["metrics"]["compression_ratio"] for c in children
        ]
        front = srv.client.get(f"/v1/sweeps/{sweep['id']}/artifacts/frontier.json").json()
        assert {r["job_id"] for r in front["candidates"]} == set(ids)
        best = max(children, key=lambda c: c["metrics"]["test_accuracy"])
        assert best["id"] in {r["job_id"] for r in front["compression_front"]}
        png = srv.client.get(f"/v1/sweeps/{sweep['id']}/artifacts/frontier.png")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    finally:
        srv.stop()
