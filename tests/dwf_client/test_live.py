"""The SDK and the ``dwf`` client commands against a real ``dwf serve`` (uvicorn + one Celery worker, SQLite).

The CLI runs as a subprocess that finds the server and key only through the config.json ``dwf serve`` wrote.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dwf_client import Client, DwfApiError, JobProgress
from dwf_client.datasets import idx_to_npz
from tests.service_helpers import MNIST, wait_until_ready

ROOT = Path(__file__).resolve().parents[2]
DWF = [sys.executable, "-m", "dwf_service.cli"]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Serve:
    """``dwf serve --data-dir DIR --port FREE`` as a subprocess."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, _free_port()
        self.log = data_dir.parent / "serve.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DWF_RECONCILE_SECONDS": "2"}
        env.pop("DWF_API_KEY", None)
        cmd = [*DWF, "serve", "--port", str(self.port), "--data-dir", str(data_dir)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until_ready(self.url, self.proc, self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``dwf ARGS``; it finds the server and key through DWF_DATA_DIR's config.json only."""
        full_env = {k: v for k, v in os.environ.items() if k not in ("DWF_API_KEY", "DWF_SERVER")}
        full_env.update({"PYTHONPATH": str(ROOT), "DWF_DATA_DIR": str(self.data_dir), **env})
        return subprocess.run(
            [*DWF, *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    srv = Serve(tmp_path_factory.mktemp("serve") / "data")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 training / 50 test MNIST images: a one-epoch job takes seconds."""
    return idx_to_npz(MNIST, tmp_path_factory.mktemp("data") / "tiny.npz", n_train=200, n_test=50)


def _tiny_idx_dir(directory: Path, n_train: int, n_test: int) -> Path:
    """An MNIST-style IDX folder (gzip) with the first images of the shared MNIST."""
    directory.mkdir()
    with np.load(idx_to_npz(MNIST, directory.parent / "subset.npz", n_train=n_train, n_test=n_test)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for prefix, split in (("train", "train"), ("t10k", "test")):
        for kind, arr in (("images", arrays[f"x_{split}"][:, 0]), ("labels", arrays[f"y_{split}"])):
            head = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
            name = f"{prefix}-{kind}-idx{arr.ndim}-ubyte.gz"
            with gzip.open(directory / name, "wb") as fh:
                fh.write(head + arr.astype(np.uint8).tobytes())
    return directory


@pytest.fixture
def client(server: Serve) -> Iterator[Client]:
    with Client.from_env(data_dir=server.data_dir) as sdk:
        yield sdk


def _one_error_line(result: subprocess.CompletedProcess[str], code: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and code in lines[0], result.stderr


def test_cli_submit_wait_download(server: Serve, tiny_npz: Path, tmp_path: Path) -> None:
    submitted = server.cli(
        "submit", "lenet_300_100", str(tiny_npz), "--depth", "3", "--target-sparsity", "0.9", "--epochs", "1",
        "--dense-epochs", "1", "--distill", "0.25", "--distill-schedule", "linear", "--augment", "shift:1",
        "--precision", "bf16", "--wait",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr + server.log.read_text()[-3000:]
    job_id = submitted.stdout.strip()
    assert job_id.startswith("job-") and "\n" not in job_id
    assert "epoch 1/1" in submitted.stderr and f"{job_id} succeeded" in submitted.stderr

    downloaded = server.cli("download", job_id, "--out", str(tmp_path / "out"))
    assert downloaded.returncode == 0, downloaded.stderr
    paths = [Path(p) for p in downloaded.stdout.split()]
    names = {p.name for p in paths}
    assert {"model.safetensors", "model.sparse.safetensors", "model.onnx", "metrics.json"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 and p.parent == tmp_path / "out" for p in paths)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["sparsity"] == pytest.approx(0.9, abs=0.01) and metrics["target_sparsity"] == 0.9
    assert metrics["dense_start"]["epochs"] == 1 and metrics["history"][0]["phase"] == "dense"
    # The options reached it.
    assert metrics["distill"] == {"alpha": 0.25, "temperature": 4.0, "schedule": "linear", "automatic": False}
    assert metrics["config"]["augment"] == "shift:1"
    assert metrics["config"]["precision"] == "bf16" and metrics["precision"] == "bf16"  # autocast on the CPU worker

    status = server.cli("status", job_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"
    events = server.cli("events", job_id)
    assert events.returncode == 0 and "epoch 1/1" in events.stdout and "job succeeded" in events.stdout
    followed = server.cli("events", job_id, "-f", "--json")  # the stream of an ended job ends at once
    followed_ids = [json.loads(line)["id"] for line in followed.stdout.splitlines()]
    assert followed.returncode == 0 and followed_ids[0] == "evt-1" and len(followed_ids) == len(set(followed_ids))
    listing = server.cli("jobs")
    assert listing.returncode == 0 and job_id in listing.stdout
    as_json = server.cli("jobs", "--status", "succeeded", "--json")
    assert as_json.returncode == 0 and job_id in [j["id"] for j in json.loads(as_json.stdout)["data"]]
    finished = server.cli("cancel", job_id)  # 409: it already succeeded
    _one_error_line(finished, "job_finished")


def test_cli_submit_an_idx_folder(server: Serve, tmp_path: Path) -> None:
    idx_dir = _tiny_idx_dir(tmp_path / "idx", 200, 50)
    submitted = server.cli("submit", "lenet_300_100", f"mnist-idx:{idx_dir}", "--epochs", "1", "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(server.cli("status", submitted.stdout.strip(), "--json").stdout)
    splits = job["metrics"]["dataset"]["splits"]
    assert job["status"] == "succeeded" and splits["train"]["samples"] + splits["val"]["samples"] == 200
    assert splits["test"]["samples"] == 50


def test_cli_bad_input_is_one_line_and_a_nonzero_exit(server: Serve, tmp_path: Path) -> None:
    for args in (
        ("status", "job-nope"),
        ("download", "job-nope"),
        ("cancel", "job-nope"),
        ("events", "job-nope", "-f"),
    ):
        _one_error_line(server.cli(*args), "job_not_found")
    _one_error_line(server.cli("submit", "lenet_300_100", str(tmp_path / "missing.npz")), "no such file")
    bad_data = tmp_path / "bad.npz"
    bad_data.write_bytes(b"\x80\x04not a dataset")
    _one_error_line(server.cli("submit", "lenet_300_100", str(bad_data)), "unsafe_format")
    _one_error_line(server.cli("jobs", DWF_API_KEY="not-a-key"), "invalid_api_key")
    _one_error_line(server.cli("--server", "http://127.0.0.1:9", "jobs"), "cannot reach")
    both = server.cli("submit", "lenet_300_100", "x.npz", "--lam", "0.1", "--target-sparsity", "0.9")
    assert both.returncode == 2 and "not both" in both.stderr and "Traceback" not in both.stderr


def test_sdk_submit_wait_cancel_and_idempotency(client: Client, tiny_npz: Path, tmp_path: Path) -> None:
    uploads: list[tuple[str, int, int]] = []
    job = client.submit("lenet_300_100", tiny_npz, depth=2, lam=1e-4, epochs=1, on_upload=lambda *a: uploads.append(a))
    assert uploads[-1] == ("tiny.npz", tiny_npz.stat().st_size, tiny_npz.stat().st_size)
    progress: list[JobProgress] = []
    assert job.wait(on_progress=progress.append, timeout=120).status == "succeeded", job
    assert progress[-1].status == "succeeded" and progress[-1].accuracy is not None
    assert any(p.loss is not None and p.compression_ratio is not None for p in progress)
    paths = job.download(tmp_path / "sdk")
    assert (tmp_path / "sdk" / "model.sparse.safetensors") in paths

    dataset = client.upload_file(tiny_npz, "dataset")
    request = {"model": {"name": "lenet_300_100"}, "dataset": {"file_id": dataset.id}, "method": {"epochs": 50}}
    first = client.create_job(request, idempotency_key="live-1")
    assert client.create_job(request, idempotency_key="live-1").id == first.id
    with pytest.raises(DwfApiError) as info:
        client.create_job({**request, "seed": 1}, idempotency_key="live-1")
    assert (info.value.status, info.value.code) == (409, "idempotency_key_reused")
    first.cancel()
    assert first.wait(timeout=60).status == "cancelled"


def test_cli_sweep_wait_download_and_sdk_cancel(server: Serve, client: Client, tiny_npz: Path, tmp_path: Path) -> None:
    """``dwf sweep --grid … --wait --out``: the live table until every child ended, then frontier.json/.png; the SDK
    lists it and cancels a second sweep's children."""
    made = server.cli(
        "sweep", "lenet_300_100", str(tiny_npz), "--grid", "target_sparsity=0.5,0.9", "--epochs", "1",
        "--option", "batch_size=64", "--wait", "--out", str(tmp_path / "front"), timeout=240,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr + server.log.read_text()[-3000:]
    sweep_id = made.stdout.strip().splitlines()[0]
    assert sweep_id.startswith("swp-")
    assert (tmp_path / "front" / "frontier.png").read_bytes().startswith(b"\x89PNG")
    front = json.loads((tmp_path / "front" / "frontier.json").read_text())
    assert front["succeeded"] == 2 and len(front["compression_front"]) >= 1
    sweep = client.get_sweep(sweep_id)
    assert sweep.status == "succeeded" and [c.point for c in sweep.children] == [
        {"target_sparsity": 0.5},
        {"target_sparsity": 0.9},
    ]
    assert [c.sparsity for c in sweep.children] == [pytest.approx(0.5, abs=0.01), pytest.approx(0.9, abs=0.01)]
    assert all(client.get_job(c.job_id).method["batch_size"] == 64 for c in sweep.children)
    children = client.list_jobs(sweep_id=sweep_id).data
    assert sorted(j.id for j in children) == sorted(c.job_id for c in sweep.children)
    assert all(j.sweep_id == sweep_id for j in children)
    shown = server.cli("sweep-status", sweep_id)
    assert shown.returncode == 0 and all(c.job_id in shown.stdout for c in sweep.children)
    assert sweep_id in server.cli("sweeps").stdout

    bad = server.cli("sweep", "lenet_300_100", str(tiny_npz), "--grid", "lam=0.1", "--option", "target_sparsity=0.9")
    _one_error_line(bad, "invalid_grid_point")
    second = client.submit_sweep("lenet_300_100", tiny_npz, {"depth": [2, 3, 4]}, epochs=50)
    cancelled = second.cancel().wait(timeout=120, poll=0.5)
    assert cancelled.status == "cancelled" and cancelled.counts["succeeded"] == 0
    assert client.list_sweep_artifacts(second.id)  # the frontier of a cancelled sweep (no candidates) is stored too
