"""dense_epochs: DWF started from a dense training of the same model, in one run."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from dwf_core.config import TrainConfig
from dwf_core.errors import ConfigError
from dwf_core.pipeline import RunSpec, run

from .helpers import write_band_npz


def test_one_run_equals_dense_then_dwf_from_its_weights(tmp_path: Path) -> None:
    """The option is exactly the two-step recipe the benchmark rows measure (dense run, then --weights)."""
    data = str(write_band_npz(tmp_path / "small.npz", 300, 100))
    common = {"seed": 0, "device": "cpu", "batch_size": 64}
    dense = run(
        RunSpec(
            "lenet_300_100",
            data,
            tmp_path / "dense",
            train=TrainConfig(method="dense", epochs=1, **common),
            export_onnx=False,
        )
    )
    # Given trained weights distill by default (a dense phase does not: it may be short): off here, to compare.
    dwf_cfg = TrainConfig(depth=3, epochs=1, target_sparsity=0.9, distill=0.0, **common)
    two_step = run(
        RunSpec(
            "lenet_300_100",
            data,
            tmp_path / "two",
            weights=str(tmp_path / "dense" / "model.safetensors"),
            train=dwf_cfg,
            export_onnx=False,
        )
    )
    phases: list[str] = []
    one_run = run(
        RunSpec(
            "lenet_300_100",
            data,
            tmp_path / "one",
            train=TrainConfig(depth=3, epochs=1, target_sparsity=0.9, dense_epochs=1, **common),
            export_onnx=False,
        ),
        on_phase=phases.append,
    )
    assert phases[:3] == ["loading", "pretraining", "training"]
    assert one_run["config"]["init"] == "balanced" == two_step["config"]["init"]
    assert one_run["dense_start"]["epochs"] == 1
    assert one_run["dense_start"]["val_accuracy"] == dense["history"][-1]["val_accuracy"]
    # The gradual cut reached 0.9 during training: nothing to fine-tune after the collapse.
    assert [h["phase"] for h in one_run["history"]] == ["dense", "train"] and one_run["cut"]["mode"] == "gradual"
    assert one_run["test_accuracy"] == two_step["test_accuracy"]
    a, b = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "two" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_dense_epochs_is_for_dwf_only() -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig(method="gmp", target_sparsity=0.9, dense_epochs=2).validate()
    assert err.value.param == "dense_epochs"
    with pytest.raises(ConfigError):
        TrainConfig(dense_epochs=-1).validate()


def test_the_dense_phase_of_a_structured_run_drops_every_structured_setting() -> None:
    """A gradual unit cut needs a MAC budget; the dense phase has neither (it once kept unit_cut and failed)."""
    from dwf_core.baselines.run import dense_config

    cfg = TrainConfig(
        structure="both", target_sparsity=0.99, target_macs=0.1, cut="gradual", unit_cut="gradual", unit_multiple=16,
        dense_epochs=2,
    )  # fmt: skip
    dense = dense_config(cfg.resolved())
    assert (dense.method, dense.structure, dense.target_macs, dense.unit_cut, dense.unit_multiple, dense.cut) == (
        "dense", "weights", None, None, None, None
    )  # fmt: skip
