"""Continue a finished job end to end: a real ``dwf serve`` process (uvicorn + its embedded Celery worker, SQLite,
local blob store) trains a DWF job to 50%, then ``dwf submit --from-job`` (a subprocess that finds the server through
the data dir's config.json) creates a job that trains on from its factors to 90%."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_embedded import ROOT, Server
from tests.service_helpers import mlp_onnx, mnist_npz, upload

pytestmark = pytest.mark.slow


def test_a_job_continued_through_the_embedded_stack(tmp_path: Path) -> None:
    data = mnist_npz(tmp_path / "mnist.npz", 600, 200)
    model = mlp_onnx(tmp_path / "mlp.onnx", hidden=(64,))
    srv = Server(tmp_path / "data")
    srv.start()
    try:
        request = {
            "model": {"file_id": upload(srv.client, model, "model")},
            "dataset": {"file_id": upload(srv.client, data, "dataset")},
            "method": {"epochs": 1, "target_sparsity": 0.5},
        }
        parent = srv.wait(srv.client.post("/v1/jobs", json=request).json()["id"], timeout=120)
        assert parent["status"] == "succeeded", parent
        env = {k: v for k, v in os.environ.items() if k not in ("DWF_API_KEY", "DWF_SERVER")}
        env.update({"PYTHONPATH": str(ROOT), "DWF_DATA_DIR": str(srv.data_dir)})
        argv = ["submit", "--from-job", parent["id"], "--target-sparsity", "0.9"]
        cli = subprocess.run([sys.executable, "-m", "dwf_service.cli", *argv], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        child = srv.wait(cli.stdout.strip(), timeout=120)
        assert child["status"] == "succeeded", child
        assert child["parent_job_id"] == parent["id"] and child["model"] == parent["model"]
        assert child["method"]["depth"] == parent["metrics"]["config"]["depth"]
        metrics = child["metrics"]
        assert metrics["continued_from"]["job_id"] == parent["id"] and metrics["continued_from"]["epoch"] == 1
        assert metrics["target_met"] and metrics["sparsity"] > parent["metrics"]["sparsity"]
        events = srv.client.get(f"/v1/jobs/{child['id']}/events?limit=100").json()["data"]
        assert any(e["message"].startswith(f"continuing from job {parent['id']}") for e in events)
        status = subprocess.run([sys.executable, "-m", "dwf_service.cli", "status", child["id"]], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert ["continues", parent["id"]] in [line.split()[:2] for line in status.stdout.splitlines()]
    finally:
        srv.stop()
