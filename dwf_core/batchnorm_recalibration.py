"""BatchNorm statistics estimated again after a cut that cost accuracy.

A BatchNorm layer normalizes with running means and variances gathered while the model trained. A cut after training
(``cut: final``, or the collapse's threshold on top of the gradual cut) removes weights those statistics still count,
so the layer keeps subtracting and dividing by the old ones. On the suite's ResNet-10t (timm) from trained weights at
99% with the final cut, the collapsed model fell to 51.4% validation accuracy (factorized 99.0%); the same model with
its statistics estimated again from 10 training batches (no step, no label) scored 97.0% (test 48.85% → 94.25%).
docs/defaults.md, "BatchNorm statistics after the cut", has the runs.

Only the statistics change, never a weight: the zeros stay zeros and the compact model is built from the result.
The new statistics are kept only when validation accuracy rose; metrics.json ``batchnorm_recalibration`` records it.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dwf_core.collapse import CollapseResult
from dwf_core.evaluate import Labeled, accuracy_of, max_logit_diff, predict_logits

# Training batches the statistics are averaged over: on ResNet-10t at 99%, 10 and 35 batches of 128 gave the same
# validation accuracy (97.0%); 20 leaves room for models with noisier batch statistics at a fraction of an epoch.
RECALIBRATION_BATCHES = 20
RECALIBRATION_BATCH_SIZE = 128


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm layers that keep running statistics (the ones a cut leaves stale)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batches: int = RECALIBRATION_BATCHES,
    batch_size: int = RECALIBRATION_BATCH_SIZE,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` (eval mode) whose BatchNorm running statistics are the plain average over ``batches``
    random batches of ``x``; every other layer runs in eval mode meanwhile (no dropout noise in the statistics)."""
    fresh = copy.deepcopy(model).eval()
    layers = batchnorm_layers(fresh)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches, not an exponential one
        layer.train()
    device = next(fresh.parameters()).device
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    for start in range(0, min(x.shape[0], batches * batch_size), batch_size):
        fresh(x[order[start : start + batch_size]].to(device))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    return fresh.eval()


def recalibrated(
    model: nn.Module, x: torch.Tensor, val: Labeled, *, batch_size: int = 1000, seed: int = 0
) -> tuple[nn.Module, float]:
    """``recalibrate_batchnorm(model, x)`` and its validation accuracy: the candidate a caller keeps where it scores
    higher than ``model``."""
    fresh = recalibrate_batchnorm(model, x, seed=seed)
    return fresh, accuracy_of(predict_logits(fresh, val.x, batch_size=batch_size), val.y)


def recalibrate_after_cut(
    collapsed: CollapseResult,
    factorized: nn.Module,
    train: Labeled,
    val: Labeled | None,
    *,
    batch_size: int = 1000,
    seed: int = 0,
) -> tuple[CollapseResult, dict[str, Any] | None]:
    """``collapsed`` with its BatchNorm statistics estimated again when the cut cost validation accuracy, kept only
    if validation accuracy rose, and what was done (None: no BatchNorm, no validation data, or a cut that cost
    nothing)."""
    before, reference = collapsed.collapsed_accuracy, collapsed.factorized_accuracy
    if val is None or before is None or reference is None or before >= reference:
        return collapsed, None
    if not batchnorm_layers(collapsed.model):
        return collapsed, None
    fresh, after = recalibrated(collapsed.model, train.x, val, batch_size=batch_size, seed=seed)
    info: dict[str, Any] = {
        "batches": RECALIBRATION_BATCHES,
        "batch_size": RECALIBRATION_BATCH_SIZE,
        "layers": len(batchnorm_layers(fresh)),
        "val_accuracy_before": before,
        "val_accuracy_after": after,
        "kept": after > before,
    }
    if after <= before:
        return collapsed, info
    diff = max_logit_diff(factorized, fresh, val.x, batch_size=batch_size)
    return replace(collapsed, model=fresh, collapsed_accuracy=after, max_abs_logit_diff=diff), info
