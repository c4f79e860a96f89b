"""Shared fixtures: ONNX files from both torch exporters, exported once per test session."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

EXPORTERS = ("torchscript", "dynamo")
MODEL_NAMES = ("mlp", "residual_cnn", "resnet18", "mobilenet_v3_small")


class ResidualCNN(nn.Module):
    """A small residual CNN with BatchNorm, as a user might write it."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        out: torch.Tensor = self.head(x)
        return out


def make_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """Build a test model in eval mode with calibrated BatchNorm, and its input shape."""
    torch.manual_seed(0)
    model: nn.Module
    if name == "mlp":
        model, shape = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)), (1, 1, 28, 28)
    elif name == "residual_cnn":
        model, shape = ResidualCNN(), (1, 3, 32, 32)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
        shape = (1, 3, 64, 64)
    # Randomly initialised mobilenet_v3 outputs ~1e-9 with default BatchNorm statistics, which would
    # make a 1e-4 comparison meaningless; one training-mode pass with a cumulative average
    # (momentum=None) sets the running statistics to real batch statistics.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, *shape[1:]))
    model.eval()
    return model, shape


@dataclass(frozen=True)
class Exported:
    """One exported ONNX file and how it was made."""

    model_name: str
    exporter: str
    path: Path
    input_shape: tuple[int, ...]


def export(model: nn.Module, shape: tuple[int, ...], path: Path, exporter: str, **kwargs: object) -> Path:
    """Export with torch's TorchScript-based (opset 17) or default dynamo exporter, as users do."""
    x = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(model, (x,), str(path), dynamo=False, **{"opset_version": 17, **kwargs})  # type: ignore[arg-type]
        else:
            # Defaults on purpose: torch 2.14 writes opset 20 and puts weights in a side file.
            torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False, **kwargs)  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Exported]:
    """Every test model exported by both exporters, keyed by (model, exporter)."""
    root = tmp_path_factory.mktemp("onnx_exports")
    out = {}
    for name in MODEL_NAMES:
        model, shape = make_model(name)
        for exporter in EXPORTERS:
            folder = root / f"{name}_{exporter}"
            folder.mkdir()
            path = export(model, shape, folder / "model.onnx", exporter)
            out[(name, exporter)] = Exported(name, exporter, path, shape)
    return out
