"""Weights that came with a model: DWF starts from them when they predict the data, else draws VarMatch factors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dwf_core.config import TrainConfig
from dwf_core.data.common import Split
from dwf_core.distill import TRAINED_WEIGHTS_ALPHA
from dwf_core.init_decision import MIN_SKILL, decide_init
from dwf_core.pipeline import RunSpec, prepare

FEATURES, CLASSES = 8, 4


def _blobs(n: int, seed: int, weights: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Four well separated Gaussian blobs (class c around 3·e_c), optionally imbalanced."""
    rng = np.random.default_rng(seed)
    y = rng.choice(CLASSES, size=n, p=weights)
    x = rng.standard_normal((n, FEATURES)).astype(np.float32) * 0.5
    x[np.arange(n), y] += 3.0
    return x, y.astype(np.int64)


def _oracle() -> nn.Linear:
    """A linear model that classifies the blobs almost perfectly: logits = the first four features."""
    model = nn.Linear(FEATURES, CLASSES)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[:, :CLASSES] = torch.eye(CLASSES)
        model.bias.zero_()
    return model


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(x), torch.from_numpy(y))


def test_weights_that_predict_are_kept() -> None:
    decision = decide_init(_oracle(), _split(*_blobs(500, 0)))
    assert decision.init == "balanced" and decision.val_accuracy > 0.95 and decision.skill > MIN_SKILL


def test_random_weights_are_an_architecture_only() -> None:
    torch.manual_seed(0)
    decision = decide_init(nn.Linear(FEATURES, CLASSES), _split(*_blobs(500, 0)))
    assert decision.init == "varmatch" and decision.skill < MIN_SKILL


def test_answering_the_majority_class_is_no_skill() -> None:
    always_zero = nn.Linear(FEATURES, CLASSES)
    with torch.no_grad():
        always_zero.weight.zero_()
        always_zero.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    decision = decide_init(always_zero, _split(*_blobs(1000, 1, weights=[0.9, 0.04, 0.03, 0.03])))
    assert decision.val_accuracy > 0.85  # high accuracy, but only the majority's share
    assert decision.init == "varmatch" and abs(decision.skill) < 0.05


def _export(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, FEATURES),), str(path), dynamo=False, opset_version=17)
    return path


@pytest.mark.parametrize(("trained", "init"), [(True, "balanced"), (False, "varmatch")])
def test_an_uploaded_onnx_graph_is_judged_by_its_accuracy(tmp_path: Path, trained: bool, init: str) -> None:
    x_train, y_train = _blobs(400, 2)
    x_test, y_test = _blobs(200, 3)
    data = tmp_path / "blobs.npz"
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    torch.manual_seed(0)
    model = _export(_oracle() if trained else nn.Linear(FEATURES, CLASSES), tmp_path / "m.onnx")
    prepared = prepare(RunSpec(str(model), str(data), tmp_path / "out", train=TrainConfig(depth=2, epochs=1)))
    assert prepared.config.init == init
    assert prepared.init_decision is not None and prepared.init_decision.init == init
    # Distillation from the given weights is on by default exactly when they were judged trained.
    assert prepared.config.distill == (TRAINED_WEIGHTS_ALPHA if trained else 0.0)
    # An init the user asks for is used as asked, without a decision; "balanced" keeps the given weights, so
    # they teach by default; an explicit distill (0 included) is kept.
    asked = prepare(
        RunSpec(str(model), str(data), tmp_path / "out", train=TrainConfig(depth=2, epochs=1, init="balanced"))
    )
    assert (asked.config.init, asked.init_decision, asked.config.distill) == ("balanced", None, TRAINED_WEIGHTS_ALPHA)
    for alpha in (0.0, 0.2):
        chosen = prepare(RunSpec(str(model), str(data), tmp_path / "out", train=TrainConfig(depth=2, distill=alpha)))
        assert chosen.config.distill == alpha


def test_a_trained_onnx_upload_runs_with_distillation_by_default(tmp_path: Path) -> None:
    """The teacher is a copy of the converted graph module: the whole run works and says it distilled."""
    from dwf_core.pipeline import run

    x_train, y_train = _blobs(400, 2)
    x_test, y_test = _blobs(200, 3)
    data = tmp_path / "blobs.npz"
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    model = _export(_oracle(), tmp_path / "m.onnx")
    cfg = TrainConfig(depth=2, epochs=1, target_sparsity=0.5, device="cpu", batch_size=64)
    metrics = run(RunSpec(str(model), str(data), tmp_path / "out", train=cfg, export_onnx=False))
    assert metrics["init_decision"]["init"] == "balanced"
    assert metrics["distill"]["alpha"] == TRAINED_WEIGHTS_ALPHA and metrics["distill"]["automatic"] is True
    assert metrics["test_accuracy"] > 0.9  # the oracle's function survives (chance: 0.25)
