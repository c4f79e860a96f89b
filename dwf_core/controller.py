"""The λ controller behind ``target_sparsity``: after each epoch, nudge λ toward a sparsity schedule.

Sparsity "now" is scale-free: the largest fraction of the factorized weights (smallest magnitudes first)
whose zeroing would change the weight vector by at most ``REL_L2`` in relative L2 norm. It does not depend
on the weights' overall scale (unlike a fixed |w| cut) and says how much could be pruned without visibly
moving the function, which is what the collapse will do at the end. The schedule lowers the density
1 − S geometrically (log-CR linear in epochs) from 1 to 1 − target, reached at ``RAMP`` of the epochs. λ is
multiplied by (density now / density scheduled)^GAIN, clipped to [1/MAX_STEP, MAX_STEP]: too dense → larger λ.
The gains are untuned first choices (docs/defaults.md, "Not measured yet").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dwf_core.factorize import factorized_tensors

REL_L2 = 0.01
RAMP = 0.75
GAIN = 1.0
MAX_STEP = 2.0
LAM_MIN = 1e-8
LAM_MAX = 1.0


def scheduled_sparsity(target: float, epoch: int, epochs: int, ramp: float = RAMP) -> float:
    """Sparsity the schedule asks for after ``epoch`` (1-based) of ``epochs``: density (1 − target)^progress."""
    progress = min(1.0, epoch / max(ramp * epochs, 1e-12))
    return 1.0 - float((1.0 - target) ** progress)


def effective_sparsity(weights: list[torch.Tensor], rel_l2: float = REL_L2) -> float:
    """Largest fraction of the weights, smallest |w| first, whose zeroing moves ‖w‖₂ by at most ``rel_l2``."""
    with torch.no_grad():
        squares = torch.cat([w.detach().reshape(-1).double().pow(2) for w in weights]) if weights else None
        if squares is None or squares.numel() == 0:
            return 0.0
        total = float(squares.sum())
        if total == 0.0:
            return 1.0
        cumulative = torch.cumsum(torch.sort(squares).values, dim=0)
        negligible = int((cumulative <= rel_l2**2 * total).sum())
    return negligible / squares.numel()


def model_sparsity(model: nn.Module, rel_l2: float = REL_L2) -> float:
    """``effective_sparsity`` over a factorized model's collapsed weights."""
    with torch.no_grad():
        return effective_sparsity([t.weight() for t in factorized_tensors(model)], rel_l2)


def next_lam(lam: float, current: float, scheduled: float, *, gain: float = GAIN, max_step: float = MAX_STEP) -> float:
    """λ for the next epoch: multiplied by (density now / density scheduled)^gain, clipped per step and overall."""
    density_now = max(1.0 - current, 1e-12)
    density_goal = max(1.0 - scheduled, 1e-12)
    factor = math.exp(gain * math.log(density_now / density_goal))
    factor = min(max(factor, 1.0 / max_step), max_step)
    return min(max(lam * factor, LAM_MIN), LAM_MAX)
