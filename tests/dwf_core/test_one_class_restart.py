"""A model that answers one class for every input restarts training like a NaN loss (dwf_core.one_class).

Real collapse, no mock: the dense 20-8-4 MLP at SGD LR 100 with the gradient norm clipped at 5 (so the loss stays
finite) ends its third epoch answering one class for all 64 validation examples (measured: val accuracy 0.3125,
the share of that class); the restart at LR 100/3 does not get stuck.

DWF's restart lowers λ too: a λ too large for the model also answers one class from its first epoch, before any
weight is dead (tests/dwf_core/test_lam_restart.py's λ 0.1 on this MLP, measured: one class at epoch 1, 0% dead;
the λ restart saw it at epoch 10).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dwf_core import defaults
from dwf_core.config import TrainConfig
from dwf_core.divergence import ONE_CLASS, restart_message
from dwf_core.one_class import majority_share, predicts_one_class
from dwf_core.report_html import _divergence_note
from dwf_core.train import ProgressEvent, train

from .helpers import TinySplit, mlp, separable_data

DATA = separable_data(256)
VAL = separable_data(64, seed=1)
CFG = TrainConfig(method="dense", epochs=3, batch_size=32, lr=100.0, max_grad_norm=5.0, seed=0, device="cpu")


class Constant(nn.Module):
    """Logits that ignore the input: class ``label`` for everything."""

    def __init__(self, classes: int = 4, label: int = 2) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))
        with torch.no_grad():
            self.bias[label] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1)


def test_a_model_stuck_on_one_class_restarts_at_a_lower_lr() -> None:
    events: list[ProgressEvent] = []
    result = train(mlp(hidden=8), DATA, VAL, CFG, on_progress=events.append)
    [record] = result.extra["divergence_restarts"]
    assert record["reason"] == ONE_CLASS
    assert (record["epoch"], record["restart"], record["val_accuracy"]) == (3, 1, pytest.approx(0.3125))
    # Clipping was on already, so the LR is what changes.
    assert (record["lr_before"], record["lr_after"]) == (100.0, pytest.approx(100.0 / defaults.DIVERGENCE_LR_FACTOR))
    assert result.extra["lr"] == pytest.approx(100.0 / defaults.DIVERGENCE_LR_FACTOR)
    assert not predicts_one_class(result.model, VAL)
    # The abandoned attempt's first two epochs, the restart in place of its third, the new attempt's three.
    assert [e.kind for e in events if e.kind != "step"] == ["epoch"] * 2 + ["restart"] + ["epoch"] * 3
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    message = restart_message(record)
    assert "one class for every validation example after epoch 3" in message and "peak lr 33.3" in message


def test_with_no_restart_left_training_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unlike a NaN loss, a constant model is no error: the run ends with it (and its record-free metrics)."""
    monkeypatch.setattr(defaults, "MAX_DIVERGENCE_RESTARTS", 0)
    result = train(mlp(hidden=8), DATA, VAL, CFG)
    assert result.extra["divergence_restarts"] == []
    assert predicts_one_class(result.model, VAL)


def test_one_class_is_flagged_only_where_it_is_clearly_wrong() -> None:
    assert majority_share(VAL.y) < 0.5
    assert predicts_one_class(Constant(), VAL)
    assert not predicts_one_class(mlp(), VAL)  # a random MLP answers several classes
    # Imbalanced labels (the majority is half or more), one class only, or too few examples: never flagged.
    skewed = TinySplit(VAL.x, torch.where(torch.arange(64) < 40, 2, VAL.y))
    assert majority_share(skewed.y) >= 0.5 and not predicts_one_class(Constant(), skewed)
    assert not predicts_one_class(Constant(), TinySplit(VAL.x, torch.full((64,), 1)))
    assert not predicts_one_class(Constant(), TinySplit(VAL.x[:10], VAL.y[:10]))
    broken = Constant()
    with torch.no_grad():
        broken.bias[0] = float("nan")
    assert not predicts_one_class(broken, VAL)  # the non-finite-loss restart's case, not this one


def test_report_names_a_one_class_restart() -> None:
    record = train(mlp(hidden=8), DATA, VAL, CFG).extra["divergence_restarts"][0]
    metrics = json.loads(json.dumps({"divergence_restarts": [record]}))  # as read back from metrics.json
    note = _divergence_note(metrics["divergence_restarts"])
    assert note.startswith("1 after a non-finite loss or a one-class model (one class for every validation example")
    assert note.endswith("after epoch 3: peak LR 100 → 33.3333)")


def test_dwf_answering_one_class_restarts_with_a_lower_lam_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The over-pruning λ of test_lam_restart: caught after epoch 1 instead of 10, with λ / 4 (and clipping), and
    the run then ends as the λ restart's did (measured there: 90% dead, 96% validation accuracy)."""
    monkeypatch.setattr(defaults, "lam_for_target", lambda *_args, **_kw: 0.1)
    data, val = separable_data(512), separable_data(128, seed=1)
    cfg = TrainConfig(
        depth=2, epochs=20, batch_size=32, target_sparsity=0.9, seed=0, device="cpu", cut="final", lr_probe=False
    )
    result = train(mlp(), data, val, cfg)
    [record] = result.extra["divergence_restarts"]
    assert (record["reason"], record["epoch"], record["lam_before"]) == (ONE_CLASS, 1, 0.1)
    assert record["lam_after"] == pytest.approx(0.1 / defaults.LAM_RESTART_FACTOR) == result.extra["lam"]
    assert record["max_grad_norm_after"] == defaults.DIVERGENCE_MAX_GRAD_NORM and result.extra["lam_restarts"] == []
    assert result.history[-1]["val_accuracy"] > 0.9 and not predicts_one_class(result.model, val)
    assert "and λ 0.025" in restart_message(record)
