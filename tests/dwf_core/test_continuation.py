"""Continuing a finished DWF run (dwf_core.continuation): the saved factors are the starting point, the new run
reaches the higher target, and every incompatible source is refused with a named setting."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from dwf_core.checkpoint import load_checkpoint
from dwf_core.cli import app
from dwf_core.config import TrainConfig
from dwf_core.continuation import apply_start_state, continued_config, load_start_state
from dwf_core.errors import ConfigError, TrainingError
from dwf_core.factorize import factorize
from dwf_core.pipeline import RunSpec, run
from dwf_core.report import sparsity_report
from dwf_core.train import Trainer, TrainingCancelled, train

from .helpers import mlp, separable_data, write_band_npz

DATA = separable_data(200)
VAL = separable_data(64, seed=1)
PARENT = TrainConfig(depth=3, epochs=2, batch_size=32, lr=0.1, target_sparsity=0.5, seed=3, device="cpu")
CHILD = replace(PARENT, target_sparsity=0.9, seed=4)


@pytest.fixture(scope="module")
def parent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint folder of a finished DWF run at 50%."""
    folder = tmp_path_factory.mktemp("parent")
    train(mlp(), DATA, VAL, PARENT, checkpoint_dir=folder)
    return folder


def test_the_saved_factors_are_the_starting_point_and_the_child_reaches_its_target(parent_dir: Path) -> None:
    start = load_start_state(parent_dir)
    assert start.epoch == 2 and start.config.target_sparsity == 0.5
    saved = load_checkpoint(parent_dir)
    assert saved is not None
    # Another seed's init: only the loaded state can make the starting point equal the parent's factors.
    child = Trainer(mlp(seed=7), DATA, VAL, CHILD, start_state=start.tensors)
    result = child.fit()
    assert child.initial_state.keys() == start.tensors.keys()
    for name, tensor in start.tensors.items():
        assert torch.equal(child.initial_state[name], tensor), name
    # Dead in the parent (every factor exactly zero) stays dead; the child goes on to its own target.
    for name, tensor in start.tensors.items():
        if ".original" in name:
            assert torch.all(result.model.state_dict()[name][tensor == 0] == 0), name
    parent_exact = sparsity_report(_factorized_with(start.tensors), threshold=0.0).sparsity
    child_exact = sparsity_report(result.model, threshold=0.0).sparsity
    assert parent_exact == pytest.approx(0.5, abs=0.01)
    assert child_exact == pytest.approx(0.9, abs=0.01)


def _factorized_with(tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = mlp()
    factorize(model, 3, "varmatch", None, None)
    apply_start_state(model, tensors)
    return model


def test_pipeline_continues_a_finished_run_to_a_higher_target(tmp_path: Path) -> None:
    data = str(write_band_npz(tmp_path / "band.npz", 300, 100))
    common: dict[str, Any] = {"seed": 0, "device": "cpu", "batch_size": 64, "epochs": 1}
    first = run(RunSpec("lenet_300_100", data, tmp_path / "first",
                        train=TrainConfig(target_sparsity=0.5, **common), export_onnx=False))  # fmt: skip
    # Depth left unset: a target of 0.995 would default to depth 4; the continued run takes the source's 3.
    second_spec = RunSpec("lenet_300_100", data, tmp_path / "second", train=TrainConfig(target_sparsity=0.995,
                          **common), export_onnx=False, start_state=tmp_path / "first" / "checkpoints")  # fmt: skip
    second = run(second_spec)
    assert first["config"]["depth"] == second["config"]["depth"] == 3
    assert second["continued_from"]["epoch"] == 1 and second["continued_from"]["target_sparsity"] == 0.5
    assert first["continued_from"] is None
    assert second["target_met"] and second["sparsity"] == pytest.approx(0.995, abs=0.002)
    assert second["init_stats"] != first["init_stats"]  # the child's start is the parent's trained factors


def test_incompatible_settings_name_the_setting(parent_dir: Path) -> None:
    start = load_start_state(parent_dir)
    assert continued_config(replace(CHILD, depth=None), start).depth == 3
    for bad, param in (
        (replace(CHILD, depth=2), "depth"),
        (replace(CHILD, target_sparsity=0.4), "target_sparsity"),
        (replace(CHILD, target_sparsity=0.5), "target_sparsity"),
        (replace(CHILD, target_sparsity=None, lam=1e-3), "target_sparsity"),
        (replace(CHILD, include=["0.*"]), "include"),
        (replace(CHILD, dense_epochs=1), "dense_epochs"),
        (replace(CHILD, method="gmp"), "method"),
    ):
        with pytest.raises(ConfigError) as err:
            continued_config(bad, start)
        assert (err.value.code, err.value.param) == ("start_state_incompatible", param)


def test_a_state_that_does_not_fit_the_model_is_refused_by_name(parent_dir: Path) -> None:
    start = load_start_state(parent_dir)
    wider = mlp(hidden=48)
    factorize(wider, 3, "varmatch", None, None)
    with pytest.raises(TrainingError) as err:
        apply_start_state(wider, start.tensors)
    assert err.value.code == "start_state_mismatch" and "shape" in err.value.message and "1." in err.value.message
    with pytest.raises(TrainingError) as err:
        Trainer(mlp(), DATA, VAL, replace(CHILD, depth=2), start_state=start.tensors).fit()
    assert err.value.code == "start_state_mismatch"
    assert "unexpected: 1.parametrizations.weight.original2" in err.value.message


def test_no_unfinished_or_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_start_state(tmp_path / "nothing")
    assert err.value.code == "start_state_missing"
    steps = {"n": 0}

    def stop_in_epoch_two() -> bool:
        steps["n"] += 1
        return steps["n"] > 7 + 1  # 7 steps per epoch: epoch 1's checkpoint is written

    with pytest.raises(TrainingCancelled):
        train(mlp(), DATA, VAL, PARENT, checkpoint_dir=tmp_path / "cut", should_stop=stop_in_epoch_two)
    with pytest.raises(ConfigError) as err:
        load_start_state(tmp_path / "cut")
    assert err.value.code == "start_state_incompatible" and "epoch 1 of 2" in err.value.message
    train(mlp(), DATA, VAL, replace(PARENT, method="gmp", depth=None), checkpoint_dir=tmp_path / "gmp")
    with pytest.raises(ConfigError) as err:
        load_start_state(tmp_path / "gmp")
    assert err.value.code == "start_state_incompatible" and "'gmp'" in err.value.message


def test_cli_from_run(tmp_path: Path) -> None:
    data = write_band_npz(tmp_path / "band.npz", 300, 100)
    base = ["train", "--model", "lenet_300_100", "--data", str(data), "--epochs", "1", "--device", "cpu", "--no-onnx"]
    first = CliRunner().invoke(app, [*base, "--target-sparsity", "0.5", "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    same = CliRunner().invoke(app, [*base, "--target-sparsity", "0.9", "--out", str(tmp_path / "a"),
                                    "--from-run", str(tmp_path / "a")])  # fmt: skip
    assert same.exit_code == 2 and "from_run" in same.output
    lower = CliRunner().invoke(app, [*base, "--target-sparsity", "0.3", "--out", str(tmp_path / "b"),
                                     "--from-run", str(tmp_path / "a")])  # fmt: skip
    assert lower.exit_code == 2 and "start_state_incompatible" in lower.output
    second = CliRunner().invoke(app, [*base, "--target-sparsity", "0.9", "--out", str(tmp_path / "b"),
                                      "--from-run", str(tmp_path / "a")])  # fmt: skip
    assert second.exit_code == 0, second.output
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["continued_from"]["epoch"] == 1 and metrics["target_met"]
    assert "continued from" in second.output
