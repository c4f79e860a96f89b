"""The frontier: several collapsed models along the accuracy–CR curve from one trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dwf_core.config import TrainConfig
from dwf_core.errors import ConfigError
from dwf_core.export import load_sparse
from dwf_core.frontier import check_frontier, compute_frontier, frontier_file_name
from dwf_core.pipeline import RunSpec, run
from dwf_core.train import train

from .helpers import mlp, separable_data, write_band_npz

DATA = separable_data(256)
VAL = separable_data(64, seed=1)
TEST = separable_data(64, seed=2)


def test_points_reach_their_ratios_and_files_restore_them(tmp_path: Path) -> None:
    model = train(mlp(), DATA, VAL, TrainConfig(depth=3, epochs=2, lam=1e-3, lr=0.1, device="cpu")).model
    points = compute_frontier(model, [4, 2, 10], VAL, TEST, out_dir=tmp_path, metadata={"model": "mlp"})
    assert [p["requested_compression_ratio"] for p in points] == [2.0, 4.0, 10.0]
    for point in points:
        # The cut is the global magnitude quantile: at least the requested sparsity, never far above it.
        assert point["compression_ratio"] >= point["requested_compression_ratio"] * (1 - 1e-9)
        assert point["compression_ratio"] <= point["requested_compression_ratio"] * 1.2
        assert 0 <= point["val_accuracy"] <= 1 and 0 <= point["test_accuracy"] <= 1
        path = tmp_path / point["file"]
        assert point["file"] == frontier_file_name(point["requested_compression_ratio"])
        assert path.stat().st_size == point["bytes"]
        weights = [t for name, t in load_sparse(path).items() if name.endswith("weight")]
        assert sum(int((t != 0).sum()) for t in weights) == point["nnz"]
    # More compression, fewer bytes.
    sizes = [p["bytes"] for p in points]
    assert sizes == sorted(sizes, reverse=True)
    # The trained model is untouched: computing it twice gives the same points.
    again = compute_frontier(model, [2, 4, 10], VAL, TEST)
    assert [p["test_accuracy"] for p in again] == [p["test_accuracy"] for p in points]
    assert "file" not in again[0]


def test_ratios_below_a_masked_models_own_sparsity_are_skipped() -> None:
    cfg = TrainConfig(method="gmp", target_sparsity=0.8, epochs=2, lr=0.1, device="cpu")
    from dwf_core.baselines.run import run_baseline

    result = run_baseline(mlp(), DATA, VAL, cfg)
    points = compute_frontier(result.train.model, [2, 10, 20], VAL)
    assert [p["requested_compression_ratio"] for p in points] == [10.0, 20.0]


@pytest.mark.parametrize("bad", [[1.0], [0.5], [float("nan")], [float("inf")], list(range(2, 40))])
def test_bad_ratios_are_refused(bad: list[float]) -> None:
    with pytest.raises(ConfigError) as err:
        check_frontier(bad)
    assert err.value.param == "frontier"
    with pytest.raises(ConfigError):
        TrainConfig(frontier=bad).resolved()


def test_dense_frontier_is_magnitude_pruning(tmp_path: Path) -> None:
    """The benchmark table reads "magnitude" off the dense run's frontier: it must equal --method magnitude."""
    data = str(write_band_npz(tmp_path / "small.npz", 400, 200))
    common = {"epochs": 1, "seed": 0, "device": "cpu", "lr": 0.05}
    dense_cfg = TrainConfig(method="dense", frontier=[10.0], **common)
    magnitude_cfg = TrainConfig(method="magnitude", target_sparsity=0.9, **common)
    dense = run(RunSpec("lenet_300_100", data, tmp_path / "dense", train=dense_cfg, export_onnx=False))
    magnitude = run(RunSpec("lenet_300_100", data, tmp_path / "magnitude", train=magnitude_cfg, export_onnx=False))
    (point,) = dense["frontier"]
    assert point["test_accuracy"] == magnitude["test_accuracy"]
    assert point["nnz"] == magnitude["nnz"]
    assert (tmp_path / "dense" / point["file"]).is_file()
    assert point["file"] in {a["name"] for a in dense["artifacts"]}
    restored = load_sparse(tmp_path / "dense" / point["file"])
    expected = load_sparse(tmp_path / "magnitude" / "model.sparse.safetensors")
    assert restored.keys() == expected.keys()
    assert all(torch.equal(restored[k], expected[k]) for k in expected)


def test_cli_frontier_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dwf_core.cli import app

    data = write_band_npz(tmp_path / "small.npz", 300, 100)
    argv = ["train", "--model", "lenet_300_100", "--data", str(data), "--out", str(tmp_path / "out"),
            "--epochs", "1", "--lam", "1e-4", "--no-onnx", "--frontier", "5,20"]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "frontier-cr5.sparse.safetensors").is_file()
    assert (tmp_path / "out" / "frontier-cr20.sparse.safetensors").is_file()
    assert "frontier CR 20" in " ".join(result.output.split())
    bad = CliRunner().invoke(app, [*argv[:-1], "10,x"])
    assert bad.exit_code == 2 and "(frontier)" in " ".join(bad.output.split()) and "Traceback" not in bad.output
