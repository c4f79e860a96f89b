"""A job with method.devices = 2 through the embedded stack: a real ``dwf serve`` (uvicorn + a solo-pool Celery
worker on SQLite) and ``dwf submit --devices 2``; the worker's process is rank 0 and starts the second gloo CPU
process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_embedded import ROOT, Server
from tests.service_helpers import mlp_onnx, mnist_npz

pytestmark = pytest.mark.slow


def test_dwf_submit_devices_2_runs_through_the_embedded_worker(tmp_path: Path) -> None:
    data, model = mnist_npz(tmp_path / "mnist.npz", 600, 200), mlp_onnx(tmp_path / "mlp.onnx", hidden=(32,))
    srv = Server(tmp_path / "data", OMP_NUM_THREADS="1")
    srv.start()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("DWF_API_KEY", "DWF_SERVER")}
        env.update({"PYTHONPATH": str(ROOT), "DWF_DATA_DIR": str(srv.data_dir), "DWF_SERVER": srv.url})
        argv = [
            *(sys.executable, "-m", "dwf_service.cli", "submit", str(model), str(data)),
            *("--epochs", "2", "--batch-size", "64", "--target-sparsity", "0.9", "--devices", "2", "--wait"),
        ]
        submitted = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
        assert submitted.returncode == 0, submitted.stderr + srv.log.read_text()[-3000:]
        job_id = submitted.stdout.strip()
        job = srv.client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded", job
        assert job["method"]["devices"] == 2
        assert job["metrics"]["processes"] == 2 and job["metrics"]["config"]["devices"] == 2
        assert job["metrics"]["sparsity"] == pytest.approx(0.9, abs=0.01)
        events = srv.client.get(f"/v1/jobs/{job_id}/events?limit=100").json()["data"]
        # Rank 0's per-epoch progress reached the database through the worker's progress writer.
        assert sum(e["type"] == "metrics" for e in events) == 2
    finally:
        srv.stop()
