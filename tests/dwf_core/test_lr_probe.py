"""The LR probe: a few steps at each rung of the restarts' ladder before training, the largest good step wins.

Real training, no mock: the tiny MLP of test_divergence_restart.py diverges at LR 3 without clipping (loss NaN at
step 9), so the probe's first rung fails and the run trains at a safer rung from its first step, with no restart.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dwf_core import defaults, lr_probe
from dwf_core.config import TrainConfig
from dwf_core.lr_probe import (
    Setting,
    _clip_changes_nothing,
    _Outcome,
    choose,
    constant_loss,
    ladder,
    probe_message,
    probe_steps,
)
from dwf_core.train import ProgressEvent, Trainer, TrainingCancelled, TrainResult, train

from .helpers import mlp, separable_data

DATA = separable_data(256)
VAL = separable_data(64, seed=1)
CFG = TrainConfig(depth=2, epochs=4, batch_size=32, lr=3.0, lam=1e-3, seed=0, device="cpu", lr_probe=True)


@pytest.fixture(scope="module")
def probed() -> tuple[TrainResult, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    return train(mlp(), DATA, VAL, CFG, on_progress=events.append), events


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_the_ladder_is_the_restarts_ladder() -> None:
    assert ladder(Setting(0.3, None), 4) == [Setting(0.3, None), Setting(0.3, 5.0), Setting(0.3 / 3, 5.0),
                                             Setting(0.3 / 3 / 3, 5.0)]  # fmt: skip
    assert ladder(Setting(0.1, 2.0), 2) == [Setting(0.1, 2.0), Setting(0.1 / defaults.DIVERGENCE_LR_FACTOR, 2.0)]


def test_the_largest_step_that_learns_is_chosen() -> None:
    chance = math.log(4)  # 4 balanced classes: the constant answer's loss; learning means below 0.9 × 1.386 = 1.25
    assert constant_loss(torch.tensor([0, 1, 2, 3] * 8)) == pytest.approx(chance)
    assert constant_loss(torch.tensor([1] * 8)) == 0.0
    assert choose([1.40, 1.22, 0.5], chance) == (1, "learns")  # 1.22 learns: 0.5 (a smaller step) does not win
    assert choose([math.inf, 1.30, 1.26], chance) == (1, "none learned: the first finite setting")
    assert choose([math.inf, math.inf], chance) == (1, "none stayed finite: the safest setting")


def test_a_clip_the_unclipped_rung_never_reached_is_not_tried() -> None:
    finished = _Outcome(1.3, 0.3, None, max_grad_norm_seen=4.0)
    assert _clip_changes_nothing((Setting(0.1, None), finished), Setting(0.1, 5.0))
    assert not _clip_changes_nothing((Setting(0.1, None), finished), Setting(0.1, 3.0))  # 3 < 4: the clip bites
    assert not _clip_changes_nothing((Setting(0.1, 5.0), finished), Setting(0.1 / 3, 5.0))  # a lower LR
    diverged = _Outcome(math.inf, 0.0, "loss nan at step 3", max_grad_norm_seen=1.0)
    assert not _clip_changes_nothing((Setting(0.1, None), diverged), Setting(0.1, 5.0))


def test_probe_steps_follow_the_run_length() -> None:
    assert probe_steps(10) == 10  # never more than the run
    assert probe_steps(400) == lr_probe.MIN_STEPS  # 3% of 400 = 12, raised to the minimum
    assert probe_steps(3000) == 90
    assert probe_steps(100_000) == lr_probe.MAX_STEPS


def test_a_diverging_rung_is_ruled_out_and_the_run_needs_no_restart(
    probed: tuple[TrainResult, list[ProgressEvent]],
) -> None:
    result, events = probed
    record = result.extra["lr_probe"]
    first = record["rungs"][0]
    assert (first["lr"], first["max_grad_norm"]) == (3.0, None)
    assert first["failed"] is not None and first["failed"].startswith("loss nan")
    assert first["train_loss"] is None
    assert record["chosen"] >= 1 and record["reason"] == "learns"
    chosen = record["rungs"][record["chosen"]]
    assert (result.extra["lr"], result.extra["max_grad_norm"]) == (chosen["lr"], chosen["max_grad_norm"])
    assert result.extra["divergence_restarts"] == []
    assert record["steps"] == 20 and record["constant_loss"] == pytest.approx(math.log(4), abs=0.05)
    # Every rung before the chosen one failed or stayed above the learning line; the chosen one is the last tried.
    assert record["chosen"] == len(record["rungs"]) - 1
    assert all(r["failed"] or r["train_loss"] >= record["learns_below"] for r in record["rungs"][:-1])
    assert record["rungs"][-1]["train_loss"] < record["learns_below"]
    assert result.history[-1]["train_accuracy"] > 0.75  # chance is 0.25
    # One "probe" event before the first epoch, carrying the record.
    kinds = [e.kind for e in events if e.kind != "step"]
    assert kinds == ["probe", "epoch", "epoch", "epoch", "epoch"]
    assert events[0].probe == record
    assert "learning-rate probe (20 steps per setting" in probe_message(record)


def test_the_probed_run_is_a_fresh_run_at_the_chosen_setting(probed: tuple[TrainResult, list[ProgressEvent]]) -> None:
    result, _ = probed
    chosen = replace(CFG, lr=result.extra["lr"], max_grad_norm=result.extra["max_grad_norm"], lr_probe=False)
    fresh = train(mlp(), DATA, VAL, chosen)
    assert fresh.extra["lr_probe"] is None
    _assert_same_weights(result.model, fresh.model)


def test_the_probe_is_on_only_when_the_lr_is_left_open() -> None:
    assert TrainConfig().resolved().lr_probe is True
    assert TrainConfig(lr=0.1).resolved().lr_probe is False
    assert TrainConfig(lr=0.1, lr_probe=True).resolved().lr_probe is True
    assert TrainConfig(lr_probe=False).resolved().lr_probe is False
    plain = train(mlp(), DATA, VAL, replace(CFG, lr=0.3, lr_probe=None))
    assert plain.extra["lr_probe"] is None


def test_a_resumed_run_keeps_the_probes_choice(tmp_path: Path, probed: tuple[TrainResult, list[ProgressEvent]]) -> None:
    """Cancelled after epoch 2 and resumed: no second probe, the same weights as the uninterrupted run."""
    seen: list[ProgressEvent] = []

    def stop() -> bool:
        return sum(1 for e in seen if e.kind == "epoch") >= 2

    with pytest.raises(TrainingCancelled):
        Trainer(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path, on_progress=seen.append, should_stop=stop).fit()
    resumed_events: list[ProgressEvent] = []
    resumed = Trainer(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path, on_progress=resumed_events.append).fit()
    assert resumed.resumed_from_epoch == 2
    assert all(e.kind != "probe" for e in resumed_events)
    assert resumed.extra["lr_probe"] == {**probed[0].extra["lr_probe"], "seconds": resumed.extra["lr_probe"]["seconds"]}
    _assert_same_weights(resumed.model, probed[0].model)


def test_lenet5_at_every_default_starts_clipped_instead_of_restarting(tmp_path: Path) -> None:
    """The issue's case (test_divergence_restart.py: NaN at step 8 of LR 0.3 unclipped, one restart): with the probe
    the unclipped rung fails within its steps, the run trains clipped from its first step and metrics.json and
    report.html say so."""
    from dwf_core.pipeline import RunSpec, run
    from tests.service_helpers import mnist_npz

    data = str(mnist_npz(tmp_path / "mnist.npz", 2000, 500))
    run(RunSpec("lenet5", data, tmp_path / "out", train=TrainConfig(epochs=2, seed=0, device="cpu"), export_onnx=False))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["divergence_restarts"] == []
    probe = metrics["lr_probe"]
    assert (probe["rungs"][0]["lr"], probe["rungs"][0]["max_grad_norm"]) == (0.3, None)
    assert probe["rungs"][0]["failed"].startswith("loss nan")
    assert probe["chosen"] >= 1 and metrics["max_grad_norm"] == 5.0
    assert metrics["lr"] == probe["lr"] and metrics["config"]["lr_probe"] is True
    assert metrics["test_accuracy"] > 0.75
    report = (tmp_path / "out" / "report.html").read_text()
    assert "learning-rate probe</th><td>peak LR" in report


@pytest.mark.parametrize(("flags", "probed"), [(["--lr", "0.05", "--lr-probe"], True), (["--no-lr-probe"], False)])
def test_dwf_train_takes_the_probe_flags(tmp_path: Path, flags: list[str], probed: bool) -> None:
    from typer.testing import CliRunner

    from dwf_core.cli import app

    from .helpers import write_band_npz

    data = write_band_npz(tmp_path / "small.npz", 300, 100)
    argv = ["train", "--model", "lenet_300_100", "--data", str(data), "--out", str(tmp_path / "out"), "--epochs",
            "1", "--device", "cpu", "--no-onnx", *flags]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["config"]["lr_probe"] is probed
    assert (metrics["lr_probe"] is not None) is probed
    assert ("learning-rate probe" in result.output) is probed
    if probed:
        assert metrics["lr_probe"]["rungs"][0]["lr"] == 0.05


def test_the_descent_ends_when_a_lower_lr_does_clearly_worse_and_nothing_learned() -> None:
    from dwf_core.lr_probe import _slower_still

    def rung(lr: float, clip: float | None) -> dict[str, object]:
        return {"lr": lr, "max_grad_norm": clip}

    gru = [rung(0.3, None), rung(0.1, 5.0), rung(0.1 / 3, 5.0)]  # the suite's GRU: 1.314, 1.375, 1.459
    assert not _slower_still(gru[:2], [1.314, 1.375])  # 4.6% worse: within the margin
    assert _slower_still(gru, [1.314, 1.375, 1.459])
    bert = [rung(0.1, None), rung(0.1, 5.0)]  # a clip alone scoring worse does not end it
    assert not _slower_still(bert, [1.500, 1.660])
    assert not _slower_still([rung(0.3, None), rung(0.1, 5.0)], [math.inf, 2.0])  # the first finite one
