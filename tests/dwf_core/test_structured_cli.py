"""`dwf train --structure units --target-macs`: metrics.json reports units and MACs, the artifact has exact zeros."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from dwf_core.cli import app

from .helpers import write_band_npz

runner = CliRunner()


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_band_npz(tmp_path_factory.mktemp("data") / "small.npz", 600, 200)


def test_structured_run_meets_its_mac_target_with_zero_units(small_npz: Path, tmp_path: Path) -> None:
    argv = ["train", "--model", "lenet5", "--data", str(small_npz), "--out", str(tmp_path), "--epochs", "2",
            "--structure", "units", "--target-macs", "0.3", "--lam", "2e-3", "--lr", "0.05", "--device", "cpu",
            "--mac-frontier", "0.5,0.2", "--no-onnx"]  # fmt: skip
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["structure"] == "units" and metrics["config"]["target_macs"] == 0.3
    structured = metrics["structured"]
    assert structured["mac_fraction"] <= 0.3 and structured["target_met"] is True
    assert metrics["mac_fraction"] == structured["mac_fraction"]
    assert structured["gated_layers"] == ["conv1", "conv2", "fc1"]
    assert [p["budget"] for p in structured["mac_frontier"]] == [0.5, 0.2]
    assert "MACs kept" in result.output
    weights = load_file(tmp_path / "model.safetensors")
    assert not any("dwf_gates" in key for key in weights)
    removed = 0
    for layer in structured["gated_layers"]:
        w, b = weights[f"{layer}.weight"], weights[f"{layer}.bias"]
        dead = (w.reshape(w.shape[0], -1) == 0).all(dim=1)
        assert bool((b[dead] == 0).all())  # a removed unit outputs exactly zero
        removed += int(dead.sum())
    assert removed == structured["units_removed"] > 0


def test_bad_structure_flag_is_one_clear_line(small_npz: Path, tmp_path: Path) -> None:
    argv = ["train", "--model", "lenet5", "--data", str(small_npz), "--out", str(tmp_path), "--epochs", "1",
            "--structure", "channels"]  # fmt: skip
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and "structure" in result.output and "Traceback" not in result.output


def test_unit_multiple_keeps_every_gated_layer_in_multiples(small_npz: Path, tmp_path: Path) -> None:
    argv = ["train", "--model", "lenet5", "--data", str(small_npz), "--out", str(tmp_path), "--epochs", "2",
            "--structure", "units", "--target-macs", "0.3", "--unit-cut", "gradual", "--unit-multiple", "4",
            "--lam", "2e-3", "--lr", "0.05", "--device", "cpu", "--mac-frontier", "0.5,0.2", "--no-onnx"]  # fmt: skip
    result = runner.invoke(app, argv, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    structured = metrics["structured"]
    assert structured["unit_multiple"] == 4 == metrics["unit_cut"]["unit_multiple"]
    assert structured["target_met"] is True and "layers in multiples of 4" in result.output
    weights = load_file(tmp_path / "model.safetensors")
    for layer in structured["gated_layers"]:
        w = weights[f"{layer}.weight"]
        kept = int((w.reshape(w.shape[0], -1) != 0).any(dim=1).sum())
        assert kept % 4 == 0 or kept < 4, (layer, kept)
    assert all(p["mac_fraction"] <= p["budget"] for p in structured["mac_frontier"])
