"""Fixtures of the fault tier: a fresh PostgreSQL cluster, Redis, API and worker per test, all owned by a Harness."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.fault.harness import Harness
from tests.integration.conftest import PG_BIN, _free_port, _missing, _postgres_user_kwargs, _sweep_stale_pg_dirs
from tests.service_helpers import mlp_onnx, mnist_npz


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fault tests run only when asked for (``-m fault``, scripts/fault.sh): a bare ``pytest`` skips them."""
    if "fault" in (config.option.markexpr or "") and "not fault" not in config.option.markexpr:
        return
    skip = pytest.mark.skip(reason="fault tier: run `bash scripts/fault.sh` (pytest -m fault tests/fault)")
    for item in items:
        if item.get_closest_marker("fault") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """300/100 MNIST images and a 784-16-10 ONNX MLP: a job trains in about a second on one CPU core."""
    d = tmp_path_factory.mktemp("fault-inputs")
    return {
        "data": _safetensors_dataset(mnist_npz(d / "mnist.npz", 300, 100)),
        "model": mlp_onnx(d / "mlp16.onnx", hidden=(16,)),
    }


def _safetensors_dataset(npz: Path) -> Path:
    """The same splits as a .safetensors dataset (no zip container: the worker reads it with no archive checks)."""
    from safetensors.numpy import save_file

    with np.load(npz) as data:
        arrays = {name: np.ascontiguousarray(data[name]) for name in data.files}
    out = npz.with_suffix(".safetensors")
    save_file(arrays, str(out))
    return out


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """PostgreSQL (a fresh cluster) and Redis started; the test starts the API and the workers."""
    if shutil.which("redis-server") is None:
        _missing("redis-server")
    if not (PG_BIN / "initdb").exists():
        _missing(f"PostgreSQL 15 ({PG_BIN / 'initdb'})")
    _sweep_stale_pg_dirs()
    base = Path(tempfile.mkdtemp(prefix="dwf-pg-"))
    h: Harness | None = None
    try:
        run_as = _postgres_user_kwargs(base)
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(base / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"],
            check=True, capture_output=True, **run_as,
        )  # fmt: skip
        h = Harness(root=tmp_path, pg_base=base, pg_port=_free_port())
        h.start_postgres()
        h.create_database()
        h.start_redis()
        yield h
    finally:
        if h is not None:
            h.close()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Stack:
    """A started stack: the harness, an API client and the ids of the tiny model and dataset."""

    h: Harness
    client: httpx.Client
    model_id: str
    data_id: str

    def body(self, seed: int = 0, epochs: int = 1) -> dict[str, Any]:
        return {
            "model": {"file_id": self.model_id},
            "dataset": {"file_id": self.data_id},
            "method": {"epochs": epochs, "batch_size": 64},
            "seed": seed,
        }

    def submit(self, seed: int = 0, **headers: str) -> str:
        resp = self.client.post("/v1/jobs", json=self.body(seed), headers=headers)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["id"])


def start_stack(h: Harness, inputs: dict[str, Path], *, faults: str = "", workers: int = 1, **worker_env: str) -> Stack:
    """Migrate, start the API and ``workers`` workers (with DWF_TEST_FAULTS=``faults``), upload the inputs."""
    h.migrate()
    h.start_api()
    for _ in range(workers):
        h.start_worker_env({"DWF_TEST_FAULTS": faults, **worker_env})
    client = h.client()
    return Stack(h, client, h.upload(client, inputs["model"], "model"), h.upload(client, inputs["data"], "dataset"))
