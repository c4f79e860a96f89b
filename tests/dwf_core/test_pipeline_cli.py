"""`dwf train` end to end on a small dataset: artifacts, metrics.json, and errors as one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dwf_core.cli import app
from dwf_core.data import load_dataset
from dwf_core.evaluate import accuracy_of, predict_logits
from dwf_core.export import load_sparse
from dwf_core.intake import build_model

from .helpers import write_band_npz

runner = CliRunner()


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable 10-class 28×28 uint8 dataset: each class lights up its own band of rows."""
    return write_band_npz(tmp_path_factory.mktemp("data") / "small.npz", 600, 200)


def _train_argv(data: Path, out: Path) -> list[str]:
    """`dwf train` on the small dataset: 3 epochs, λ 1e-3, CPU."""
    return ["train", "--model", "lenet_300_100", "--data", str(data), "--depth", "3", "--epochs", "3",
            "--lam", "1e-3", "--out", str(out), "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(small_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    result = runner.invoke(app, _train_argv(small_npz, out))
    assert result.exit_code == 0, result.output
    return out


def test_metrics_json_has_documented_fields(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("test_accuracy", "sparsity", "compression_ratio", "nnz", "total", "threshold", "layers", "history"):
        assert key in metrics, key
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["test_accuracy"] > 0.5
    assert len(metrics["history"]) == 3
    assert [layer["name"] for layer in metrics["layers"]] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert {a["name"] for a in metrics["artifacts"]} >= {"model.safetensors", "model.sparse.safetensors"}


def test_dense_artifact_reproduces_reported_numbers(trained: Path, small_npz: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    model = build_model("lenet_300_100", num_classes=10)
    model.load_state_dict(load_file(str(trained / "model.safetensors")), strict=True)
    names = [layer["name"] for layer in metrics["layers"]]
    nnz = sum(int(torch.count_nonzero(model.get_parameter(n))) for n in names)
    assert nnz == metrics["nnz"]
    assert sum(model.get_parameter(n).numel() for n in names) == metrics["total"]
    data = load_dataset(str(small_npz), seed=0)
    assert accuracy_of(predict_logits(model, data.test.x), data.test.y) == metrics["test_accuracy"]


def test_sparse_artifact_restores_dense_bit_for_bit(trained: Path) -> None:
    dense = load_file(str(trained / "model.safetensors"))
    sparse = load_sparse(trained / "model.sparse.safetensors")
    assert set(sparse) == set(dense)
    for name, tensor in dense.items():
        assert torch.equal(sparse[name], tensor), name


def test_onnx_artifact_matches_pytorch(trained: Path) -> None:
    model = build_model("lenet_300_100", num_classes=10)
    model.load_state_dict(load_file(str(trained / "model.safetensors")), strict=True)
    x = torch.randn(4, 1, 28, 28)
    session = ort.InferenceSession(str(trained / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, model.eval()(x).detach().numpy(), atol=1e-4)


def test_rerun_resumes_from_checkpoint(trained: Path, small_npz: Path) -> None:
    before = json.loads((trained / "metrics.json").read_text())
    result = runner.invoke(app, _train_argv(small_npz, trained))
    assert result.exit_code == 0, result.output
    after = json.loads((trained / "metrics.json").read_text())
    assert after["resumed_from_epoch"] == 3
    assert after["test_accuracy"] == before["test_accuracy"] and after["nnz"] == before["nnz"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "no_such_net"], "unknown_model"),
        (["--data", "/nonexistent/file.npz"], "not_found"),
        (["--depth", "0"], "depth"),
        (["--threshold", "soon"], "threshold"),
        (["--optimizer", "lbfgs"], "optimizer"),
        (["--lr", "-1"], "lr"),
        (["--cut", "sometimes"], "cut"),
        (["--cut", "final"], "cut"),  # without --target-sparsity
        (["--augment", "rotate"], "unknown transform 'rotate'"),
        (["--precision", "fp16"], "precision must be one of auto, fp32, bf16"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], expected: str, small_npz: Path, tmp_path: Path) -> None:
    base = {"--model": "lenet_300_100", "--data": str(small_npz), "--out": str(tmp_path), "--epochs": "1"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["train"] + [item for pair in base.items() for item in pair]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert expected in result.output
    assert not (tmp_path / "metrics.json").exists()


def test_same_settings_same_run_whatever_the_global_rng(small_npz: Path, tmp_path: Path) -> None:
    """Zoo models draw biases from torch's global RNG: the pipeline seeds it, so runs repeat exactly."""
    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    results = []
    for attempt in range(2):
        torch.manual_seed(1000 + attempt)  # whatever happened before in the process
        spec = RunSpec(
            model="lenet_300_100",
            data=str(small_npz),
            out_dir=tmp_path / str(attempt),
            train=TrainConfig(epochs=1, lam=1e-3, device="cpu"),
            export_onnx=False,
        )
        results.append(run(spec))
    first, second = results
    assert first["history"][0]["train_loss"] == second["history"][0]["train_loss"]
    assert first["nnz"] == second["nnz"] and first["test_accuracy"] == second["test_accuracy"]
    assert (
        load_file(str(tmp_path / "0" / "model.safetensors")).keys()
        == load_file(str(tmp_path / "1" / "model.safetensors")).keys()
    )
    for name, tensor in load_file(str(tmp_path / "0" / "model.safetensors")).items():
        assert torch.equal(tensor, load_file(str(tmp_path / "1" / "model.safetensors"))[name]), name
