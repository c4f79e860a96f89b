"""Shared helpers of the service tests: settings on a temp dir, a context with a recording publisher, test files."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dwf_service.context import ServiceContext
from dwf_service.migrate import upgrade_db
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
