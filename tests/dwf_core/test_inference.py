"""dwf_core.inference and the pipeline's compact step: MACs, latency, and what a finished job writes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from dwf_core.compact.quantize import quantize_compact
from dwf_core.config import TrainConfig
from dwf_core.export import export_onnx
from dwf_core.inference import count_macs, measure, onnx_latency
from dwf_core.intake import build_model
from dwf_core.pipeline import ARTIFACTS, RunSpec, run

from .helpers import write_band_npz

MNIST = (1, 28, 28)


def test_macs_of_the_lenets_are_the_textbook_numbers() -> None:
    mlp = build_model("lenet_300_100", num_classes=10, in_channels=1, input_shape=MNIST)
    assert count_macs(mlp, torch.zeros(3, *MNIST)) == 784 * 300 + 300 * 100 + 100 * 10
    lenet5 = build_model("lenet5", num_classes=10, in_channels=1, input_shape=MNIST)
    convs = 20 * 24 * 24 * 25 + 50 * 8 * 8 * 20 * 25
    assert count_macs(lenet5, torch.zeros(1, *MNIST)) == convs + 800 * 500 + 500 * 10


def test_recurrent_layers_count_every_gate_of_every_step() -> None:
    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(8, 32, num_layers=2, bidirectional=True, batch_first=True)
            self.gru = torch.nn.GRU(64, 16)  # sequence-first
            self.cell = torch.nn.RNNCell(16, 4)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(x)
            seq, _ = self.gru(out.transpose(0, 1))
            result: torch.Tensor = self.head(self.cell(seq[-1]))
            return result

    steps = 24
    lstm = steps * (2 * 4 * 32 * (8 + 32) + 2 * 4 * 32 * (64 + 32))
    gru = steps * 3 * 16 * (64 + 16)
    cell = 1 * 16 * 4 + 4 * 4  # one step: input and hidden weights
    assert count_macs(Tagger(), torch.randn(5, steps, 8)) == lstm + gru + cell + 4 * 3


def test_latency_is_measured_for_every_model_and_batch(tmp_path: Path) -> None:
    big = build_model("lenet_300_100", num_classes=10).eval()
    small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model in (("big", big), ("small", small)):
            assert export_onnx(model, torch.zeros(2, *MNIST), tmp_path / f"{name}.onnx").exported
            paths[name] = tmp_path / f"{name}.onnx"
    result = onnx_latency(paths, torch.zeros(1, *MNIST), batches=(1, 8), seconds=0.05, min_runs=3)
    assert result["runs"]["1"] >= 3 and result["runs"]["8"] >= 3
    for name in paths:
        assert set(result[name]) == {"1", "8"} and all(ms > 0 for ms in result[name].values())
    numbers = measure({"dense": (big, paths["big"]), "compact": (small, paths["small"])}, torch.zeros(4, *MNIST),
                      seconds=0.05)  # fmt: skip
    assert numbers["dense"]["macs"] == 266200 and numbers["compact"]["macs"] == 7840
    assert numbers["mac_reduction"] == pytest.approx(266200 / 7840)
    assert numbers["dense"]["bytes"] == paths["big"].stat().st_size


def test_a_job_writes_the_compact_model_and_inference_numbers(tmp_path: Path) -> None:
    data = write_band_npz(tmp_path / "band.npz", 300, 100)
    cfg = TrainConfig(epochs=1, target_sparsity=0.9, device="cpu", finetune_epochs=0)
    metrics = run(RunSpec("lenet_300_100", str(data), tmp_path / "out", train=cfg))
    names = {a["name"] for a in metrics["artifacts"]}
    assert {"model.compact.safetensors", "model.compact.onnx"} <= names <= set(ARTIFACTS)
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    compact, inference = on_disk["compact"], on_disk["inference"]
    assert compact["max_abs_diff"] < 1e-4 and compact["params"] <= compact["dense_params"]
    for model in ("dense", "compact"):
        assert inference[model]["macs"] > 0 and set(inference[model]["latency_ms"]) == {"1", "64"}
    assert inference["compact"]["macs"] <= inference["dense"]["macs"]
    assert inference["speedup"]["64"] > 0
    int8 = compact["int8"]
    assert "model.compact.int8.onnx" in names and int8["bytes"] < inference["compact"]["bytes"]
    assert abs(int8["test_accuracy"] - int8["float_test_accuracy"]) <= 0.05
    assert int8["float_test_accuracy"] == pytest.approx(on_disk["test_accuracy"], abs=0.011)  # onnxruntime vs torch
    assert set(inference["compact_int8"]["latency_ms"]) == {"1", "64"} and inference["int8_speedup"]["1"] > 0


def test_quantization_skips_token_inputs_and_broken_graphs(tmp_path: Path) -> None:
    ids = torch.zeros(4, 8, dtype=torch.int64)
    info, path = quantize_compact(tmp_path / "model.compact.onnx", ids, ids, torch.zeros(4, dtype=torch.int64))
    assert path is None and "integer inputs" in info["skipped"]
    broken = tmp_path / "model.compact.onnx"
    broken.write_bytes(b"not onnx")
    x = torch.randn(8, 4)
    info, path = quantize_compact(broken, x, x, torch.zeros(8, dtype=torch.int64))
    assert path is None and "quantization failed" in info["skipped"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.compact.onnx"]  # nothing half-written left
