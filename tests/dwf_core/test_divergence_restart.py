"""A step too large makes the loss NaN/inf: training restarts from its initial weights with a safer setting.

Real divergence, no mock: a tiny MLP at D = 2 with SGD (momentum 0.9) at LR 3 diverges in its second epoch
(measured: loss NaN at epoch 2, step 2); the restart at the same LR with the gradient norm clipped at 5 trains. A
run already clipped restarts with the LR divided by DIVERGENCE_LR_FACTOR instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from dwf_core import defaults
from dwf_core.config import TrainConfig
from dwf_core.errors import TrainingError
from dwf_core.train import ProgressEvent, Trainer, TrainingCancelled, TrainResult, train

from .helpers import mlp, separable_data

DATA = separable_data(256)
VAL = separable_data(64, seed=1)
CFG = TrainConfig(depth=2, epochs=4, batch_size=32, lr=3.0, lam=1e-3, seed=0, device="cpu")


@pytest.fixture(scope="module")
def diverged() -> tuple[TrainResult, list[ProgressEvent]]:
    """The diverging run, uninterrupted, with its progress events (shared)."""
    events: list[ProgressEvent] = []
    return train(mlp(), DATA, VAL, CFG, on_progress=events.append), events


def _without_times(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_a_diverging_lr_restarts_once_and_ends_finite(diverged: tuple[TrainResult, list[ProgressEvent]]) -> None:
    result, events = diverged
    [record] = result.extra["divergence_restarts"]
    assert record == {
        "reason": "non_finite_loss",
        "restart": 1,
        "epoch": 2,
        "step": 2,
        "global_step": 9,  # 8 steps per epoch: the first of epoch 2 went through
        "loss": "nan",
        "lr_before": 3.0,
        "lr_after": 3.0,  # clipping was off: it comes first, at the same LR
        "max_grad_norm_before": None,
        "max_grad_norm_after": defaults.DIVERGENCE_MAX_GRAD_NORM,
    }
    assert (result.extra["lr"], result.extra["max_grad_norm"]) == (3.0, 5.0)
    # The history is the whole second attempt, finite and above chance (0.25; LR 3 is far too large for this toy).
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    assert result.history[-1]["val_accuracy"] > 0.5
    # One "restart" event, between the abandoned attempt's first epoch and the new attempt's first.
    kinds = [e.kind for e in events if e.kind != "step"]
    assert kinds == ["epoch", "restart", "epoch", "epoch", "epoch", "epoch"]
    restart = next(e for e in events if e.kind == "restart")
    assert restart.restart == record and (restart.epoch, restart.step, restart.global_step) == (2, 2, 0)


def test_the_restart_is_a_fresh_run_at_the_safer_setting(diverged: tuple[TrainResult, list[ProgressEvent]]) -> None:
    """Same initial weights, RNG and data order as the first attempt; only the LR and the clip differ."""
    fresh = train(mlp(), DATA, VAL, replace(CFG, max_grad_norm=5.0))
    assert fresh.extra["divergence_restarts"] == []
    _assert_same_weights(diverged[0].model, fresh.model)
    assert _without_times(fresh.history) == _without_times(diverged[0].history)


def test_a_run_that_keeps_diverging_ends_with_non_finite_loss_naming_every_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loose clip of the user's own stays, so the restart divides the LR: 100 and 100 / 3 both diverge at D = 3."""
    monkeypatch.setattr(defaults, "MAX_DIVERGENCE_RESTARTS", 1)
    cfg = replace(CFG, depth=3, lr=100.0, max_grad_norm=1e6)
    with pytest.raises(TrainingError) as err:
        train(mlp(), DATA, VAL, cfg)
    assert (err.value.code, err.value.param) == ("non_finite_loss", "lr")
    message = err.value.message
    assert "in each of 2 attempts from the initial weights" in message
    assert "peak lr 100 with gradient norm clipped at 1e+06: nan at epoch 1, step 4" in message
    assert "peak lr 33.3 with gradient norm clipped at 1e+06: inf at epoch 1, step 4" in message
    assert "lower the learning rate or λ" in message


def test_no_restart_budget_fails_at_once_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "MAX_DIVERGENCE_RESTARTS", 0)
    with pytest.raises(TrainingError) as err:
        train(mlp(), DATA, VAL, CFG)
    assert err.value.code == "non_finite_loss"
    assert "in the only attempt" in err.value.message and "clip gradients (max_grad_norm, e.g. 5)" in err.value.message


@pytest.mark.parametrize("stop", ["before", "after"])
def test_resume_around_a_divergence_restart_repeats_the_uninterrupted_run(
    diverged: tuple[TrainResult, list[ProgressEvent]], tmp_path: Path, stop: str
) -> None:
    """Stopped before the divergence (the resumed run meets it again) or two epochs into the second attempt."""
    uninterrupted = diverged[0]
    seen: list[ProgressEvent] = []

    def should_stop() -> bool:
        epochs = [e for e in seen if e.kind == "epoch"]
        if stop == "before":
            return len(epochs) == 1
        after = [e for e in seen[next((i for i, e in enumerate(seen) if e.kind == "restart"), len(seen)) :]]
        return sum(1 for e in after if e.kind == "epoch") == 2

    with pytest.raises(TrainingCancelled):
        Trainer(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path, on_progress=seen.append, should_stop=should_stop).fit()
    assert any(e.kind == "restart" for e in seen) == (stop == "after")
    resumed = Trainer(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path).fit()
    assert resumed.resumed_from_epoch == (1 if stop == "before" else 2)
    assert resumed.extra["divergence_restarts"] == uninterrupted.extra["divergence_restarts"]
    assert (resumed.extra["lr"], resumed.extra["max_grad_norm"]) == (3.0, 5.0)
    assert _without_times(resumed.history) == _without_times(uninterrupted.history)
    _assert_same_weights(resumed.model, uninterrupted.model)


def test_metrics_json_lists_the_restart(tmp_path: Path) -> None:
    """The issue's case: LeNet-5-Caffe at LR 0.3 without clipping (the defaults, the LR probe off: with it the run
    starts clipped, test_lr_probe.py) on 2,000 MNIST images: NaN at step 8, one restart with the gradient norm clipped
    at 5, 82.4% test after 2 epochs (measured)."""
    from dwf_core.pipeline import RunSpec, run
    from tests.service_helpers import mnist_npz

    data = str(mnist_npz(tmp_path / "mnist.npz", 2000, 500))
    cfg = TrainConfig(epochs=2, seed=0, device="cpu", lr_probe=False)
    run(RunSpec("lenet5", data, tmp_path / "out", train=cfg, export_onnx=False))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    [record] = metrics["divergence_restarts"]
    assert (record["epoch"], record["step"], record["loss"]) == (1, 8, "nan")
    assert (record["lr_before"], record["lr_after"], record["max_grad_norm_after"]) == (0.3, 0.3, 5)
    assert (metrics["lr"], metrics["max_grad_norm"], metrics["config"]["max_grad_norm"]) == (0.3, 5, None)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["test_accuracy"] > 0.75
    report = (tmp_path / "out" / "report.html").read_text()
    said = "training restarts</th><td>1 after a non-finite loss (loss nan at epoch 1, step 8: gradient norm clipped"
    assert said in report


def test_report_says_what_each_restart_changed(tmp_path: Path) -> None:
    from dwf_core.divergence import restart_record
    from dwf_core.report_html import write_report

    from .test_report_html import fake_metrics

    first = restart_record(epoch=1, step=8, global_step=7, loss=math.nan, lr=0.3, max_grad_norm=None, restart=1)
    second = restart_record(epoch=3, step=2, global_step=17, loss=math.inf, lr=0.3, max_grad_norm=5.0, restart=2)
    metrics = fake_metrics(frontier=False)
    assert "training restarts" not in write_report(tmp_path / "a", {**metrics, "divergence_restarts": []}).read_text()
    text = write_report(tmp_path / "b", {**metrics, "divergence_restarts": [first, second]}).read_text()
    assert (
        "training restarts</th><td>2 after a non-finite loss (loss nan at epoch 1, step 8: gradient norm clipped at 5; "
        "loss inf at epoch 3, step 2: peak LR 0.3 → 0.1)" in text
    )
