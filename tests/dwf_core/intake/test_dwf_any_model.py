"""DWF on models nobody wrote for this library: factorize, train an epoch, collapse, export, compare.

Covers a PyTorch module with a residual add and LayerNorm, and ONNX files of torchvision's resnet18 and
mobilenet_v3_small from both exporters (TorchScript-based and dynamo), converted by our intake.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from dwf_core.collapse import collapse_and_verify
from dwf_core.config import TrainConfig
from dwf_core.export import export_onnx
from dwf_core.factorize import factorize, factorized_tensors
from dwf_core.intake import load_onnx
from dwf_core.train import train

from ..helpers import ResidualNorm, TinySplit
from .conftest import Exported


def _random_split(shape: tuple[int, ...], n: int, classes: int, seed: int) -> TinySplit:
    g = torch.Generator().manual_seed(seed)
    return TinySplit(torch.randn(n, *shape[1:], generator=g), torch.randint(0, classes, (n,), generator=g))


def _dwf_round_trip(model: nn.Module, shape: tuple[int, ...], out: Path, *, init: str) -> None:
    before = {n for n, _ in model.named_parameters()}
    state_keys = list(model.state_dict())
    factorize(model, 3, init=init)  # type: ignore[arg-type]
    assert factorized_tensors(model), "no Linear/Conv weight was found to factorize"
    data, val = _random_split(shape, 32, 10, 0), _random_split(shape, 16, 10, 1)
    cfg = TrainConfig(depth=3, epochs=1, batch_size=16, lr=0.01, lam=1e-3, device="cpu")
    result = train(model, data, val, cfg)
    assert len(result.history) == 1

    collapsed = collapse_and_verify(result.model, val, 1e-3)
    plain = collapsed.model.eval()
    assert list(plain.state_dict()) == state_keys
    assert {n for n, _ in plain.named_parameters()} == before
    # The collapsed model is the factorized one up to the zeroed tiny weights.
    assert collapsed.max_abs_logit_diff is not None

    path = out / "collapsed.onnx"
    exported = export_onnx(plain, val.x[:2], path)
    assert exported.exported, exported.reason
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = val.x[:4]
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch_out = plain(x).numpy()
    scale = max(1.0, float(np.abs(torch_out).max()))
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4 * scale, rtol=0)


def test_custom_residual_layernorm_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ResidualNorm(classes=10)
    _dwf_round_trip(model, (1, 1, 12, 12), tmp_path, init="varmatch")


class _LSTMTagger(nn.Module):
    """A bidirectional 2-layer LSTM over (N, 12, 6) sequences, its final states into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 16, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(x)
        out: torch.Tensor = self.head(torch.cat([hidden[-2], hidden[-1]], dim=1))
        return out


def test_lstm_module_every_recurrent_matrix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _dwf_round_trip(_LSTMTagger(), (1, 12, 6), tmp_path, init="varmatch")  # state_dict keys kept in order
    assert {n for n, p in _LSTMTagger().named_parameters() if p.dim() >= 2} == {
        t.name for t in factorized_tensors(factorize(_LSTMTagger(), 2))
    }  # all 8 LSTM matrices and the head


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_onnx_torchvision_models(
    name: str, exporter: str, onnx_exports: dict[tuple[str, str], Exported], tmp_path: Path
) -> None:
    exported = onnx_exports[(name, exporter)]
    model = load_onnx(exported.path, allow_external_data=exporter == "dynamo")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) > 10, "converted graph should expose real Conv2d modules"
    model.train()
    _dwf_round_trip(model, exported.input_shape, tmp_path, init="balanced")
