"""Shared helpers of the service tests: settings on a temp dir, a context with a recording publisher, test files."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from dwf_service import jobs
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.migrate import upgrade_db
from dwf_service.models import DEFAULT_TENANT_ID, File, Job, new_id
from dwf_service.queue import Message
from dwf_service.settings import Settings

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    """Embedded-mode settings rooted at ``data_dir`` (no reconciler thread unless asked)."""
    values: dict[str, object] = {"data_dir": data_dir, "reconcile_seconds": 0, "max_upload_bytes": 50 * 2**20}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def make_context(settings: Settings, published: list[Message]) -> ServiceContext:
    """A migrated database and a context whose queue messages land in ``published``."""
    upgrade_db(settings.database_url)
    return ServiceContext.create(settings, published.append, use_celery=False)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist_npz(path: Path, n_train: int, n_test: int) -> Path:
    """An .npz MNIST subset (uint8 images N×1×28×28, int64 labels) from the shared IDX files."""
    x_train = _idx(MNIST / "train-images.idx3-ubyte.gz")[:n_train, None]
    y_train = _idx(MNIST / "train-labels.idx1-ubyte.gz")[:n_train].astype(np.int64)
    x_test = _idx(MNIST / "t10k-images.idx3-ubyte.gz")[:n_test, None]
    y_test = _idx(MNIST / "t10k-labels.idx1-ubyte.gz")[:n_test].astype(np.int64)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def mlp_onnx(path: Path, hidden: tuple[int, ...] = (300, 100), classes: int = 10, seed: int = 0) -> Path:
    """A LeNet-300-100-like MLP exported as one self-contained ONNX file (TorchScript exporter)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    width = 784
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    model = nn.Sequential(*layers).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is what we want here
        _export(model, path)
    return path


def _export(model: Any, path: Path) -> None:
    import torch

    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
    )


# ------------------------------------------------------------------ end-to-end helpers (embedded and stack modes)

ARTIFACT_NAMES = {"model.safetensors", "model.sparse.safetensors", "model.onnx", "metrics.json"}
# dwf_core.compact: the model without its dead units and its int8 version (the MLP graphs these tests upload always
# compact and quantize).
ARTIFACT_NAMES |= {"model.compact.safetensors", "model.compact.onnx", "model.compact.int8.onnx"}
# dwf_core.report_html.REPORT_ARTIFACTS: the self-contained report and its plots (always all five).
ARTIFACT_NAMES |= {"report.html", *(f"plot-{p}.png" for p in ("loss", "accuracy", "compression", "layers", "frontier"))}


def upload(client: httpx.Client, path: Path, purpose: str) -> str:
    """POST /v1/files; returns the file id."""
    with open(path, "rb") as fh:
        resp = client.post("/v1/files", files={"file": (path.name, fh)}, data={"purpose": purpose})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def download_artifacts(client: httpx.Client, job_id: str, dest: Path) -> list[dict[str, Any]]:
    """Download every artifact of a job into ``dest``, checking size, ETag and sha256 against the artifact list."""
    artifacts: list[dict[str, Any]] = client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]
    assert {a["name"] for a in artifacts} == ARTIFACT_NAMES
    for art in artifacts:
        resp = client.get(art["url"])
        assert resp.headers["etag"] == f'"{art["sha256"]}"'
        if resp.status_code == 307:  # S3 storage: a presigned URL, fetched without the API key
            resp = httpx.get(resp.headers["location"], timeout=30)
        assert resp.status_code == 200
        assert int(resp.headers["content-length"]) == art["bytes"] == len(resp.content)
        assert hashlib.sha256(resp.content).hexdigest() == art["sha256"]
        (dest / art["name"]).write_bytes(resp.content)
    return artifacts


def check_reported_results(job: dict[str, Any], model_path: Path, data_path: Path, out: Path) -> None:
    """Load model.safetensors into the uploaded ONNX model; recompute the reported accuracy and sparsity exactly."""
    import torch
    from safetensors.torch import load_file

    from dwf_core import load_sparse
    from dwf_core.data import load_dataset
    from dwf_core.evaluate import accuracy_of, predict_logits
    from dwf_core.intake import load_onnx

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] == job["metrics"]["test_accuracy"]
    model = load_onnx(model_path)
    dense = load_file(str(out / "model.safetensors"))
    model.load_state_dict(dense, strict=True)
    data = load_dataset(str(data_path), seed=0)
    assert accuracy_of(predict_logits(model, data.test.x), data.test.y) == metrics["test_accuracy"]
    layers = {layer["name"]: layer for layer in metrics["layers"]}
    nnz = sum(int(torch.count_nonzero(dense[name])) for name in layers)
    total = sum(dense[name].numel() for name in layers)
    assert (nnz, total) == (metrics["nnz"], metrics["total"])
    assert 1.0 - nnz / total == metrics["sparsity"]
    sparse = load_sparse(str(out / "model.sparse.safetensors"))
    assert sparse.keys() == dense.keys() and all(torch.equal(sparse[k], dense[k]) for k in dense)


TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")


def wait_for_job(
    client: httpx.Client, job_id: str, timeout: float, logs: Callable[[], str], poll: float = 0.3
) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until the job ends; on timeout fail with the server logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL_STATUSES:
            return job
        time.sleep(poll)
    raise AssertionError(f"job {job_id} not finished in {timeout} s:\n{logs()}")


def wait_until_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Poll ``GET url/readyz`` until 200; fail with the log's tail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("dwf serve did not become ready:\n" + log.read_text()[-3000:])


def stored_file(ctx: ServiceContext, path: Path, purpose: str, fmt: str) -> str:
    """Put ``path`` in the blob store and its row in the database, as an upload would (default tenant)."""
    file_id = new_id("file")
    key = f"files/{file_id}"
    with open(path, "rb") as fh:
        size, sha = ctx.storage.put_stream(key, fh)
    with session_scope(ctx.sessions) as session:
        row = File(id=file_id, bytes=size, sha256=sha, filename=path.name, purpose=purpose, format=fmt, storage_key=key)
        row.tenant_id = DEFAULT_TENANT_ID
        session.add(row)
    return file_id


def stored_job(ctx: ServiceContext, model: Path, data: Path, **method: object) -> str:
    """A new job (status validating_files) on a stored ONNX model and .npz dataset: D = 3, 1 epoch, batch 64."""
    model_id, data_id = stored_file(ctx, model, "model", "onnx"), stored_file(ctx, data, "dataset", "npz")
    request = {
        "model": {"file_id": model_id},
        "dataset": {"file_id": data_id},
        "method": {"type": "dwf", "depth": 3, "epochs": 1, "batch_size": 64, **method},
        "seed": 0,
    }
    with session_scope(ctx.sessions) as session:
        return jobs.create_job(session, request, file_ids={"model": model_id, "dataset": data_id}).id


def job_row(ctx: ServiceContext, job_id: str) -> Job:
    """The job's database row as it is now."""
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def train_cancelled_at_step(ctx: ServiceContext, job_id: str, step: int = 10) -> int:
    """Run ``runner.train_job`` with the job's cancel requested at the lease's ``step``-th stop poll (a poll per
    training step, asked at once); returns how many polls the run made."""
    import pytest

    from dwf_service import runner

    calls = {"n": 0}
    original = runner._Lease.should_stop

    def should_stop(self: runner._Lease) -> bool:
        calls["n"] += 1
        if calls["n"] == step:
            with session_scope(ctx.sessions) as session:
                jobs.request_cancel(session, job_id)
            self._last_cancel_poll = 0.0
        return original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner._Lease, "should_stop", should_stop)
        runner.train_job(ctx, job_id)
    return calls["n"]
