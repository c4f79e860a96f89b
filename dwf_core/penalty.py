"""The DWF penalty: optimizer groups that realise it, and helpers that compute it both ways.

With the objective L(ω1⊙…⊙ωD) + (λ/D)·Σ_d ‖ω_d‖², plain (coupled) weight decay wd on each factor adds
wd/2·ω², so wd = 2λ/D. At the optimum the factor penalty equals λ·Σ|w|^{2/D} (AM–GM, equality iff the
factors are balanced), which is why D = 2 acts like L1 and D ≥ 3 like a sparser non-convex Lq.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dwf_core.errors import ConfigError
from dwf_core.factorize import factorized_tensors
from dwf_core.structured.gates import group_parameters


def factor_weight_decay(lam: float, depth: int) -> float:
    """The coupled weight decay 2λ/D that each factor needs for the penalty (λ/D)·‖ω‖²."""
    return 2.0 * lam / depth


def param_groups(model: nn.Module, lam: float, *, other_weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups: factors get weight decay 2λ/D (per D), every other parameter its own.

    Args:
        model: a model after ``factorize``.
        lam: λ ≥ 0, the strength of the induced λ·Σ|w|^{2/D} penalty.
        other_weight_decay: decay for biases, normalisation and non-factorized weights (default none).

    Returns:
        A list of dicts for ``torch.optim.SGD/Adam`` (coupled decay; not AdamW, whose decoupled decay breaks
        the equivalence). Each group carries a ``"dwf"`` key ("factors" or "other") for logging.

    Raises:
        ConfigError: if λ or the other decay is negative or not finite.
    """
    for name, value in (("lam", lam), ("weight_decay", other_weight_decay)):
        if not (value >= 0.0 and value < float("inf")):
            raise ConfigError(f"{name} must be a finite number ≥ 0, got {value!r}", param=name)
    by_depth: dict[int, list[nn.Parameter]] = {}
    factor_ids: set[int] = set()
    for tensor in factorized_tensors(model):
        for factor in tensor.factors():
            if id(factor) not in factor_ids:
                factor_ids.add(id(factor))
                by_depth.setdefault(tensor.depth, []).append(factor)
    # Structured DWF: gates and the weights/biases of gated units take the same 2λ/D (dwf_core.structured).
    for depth, param in group_parameters(model):
        if id(param) not in factor_ids:
            factor_ids.add(id(param))
            by_depth.setdefault(depth, []).append(param)
    others = [p for p in model.parameters() if id(p) not in factor_ids]
    groups: list[dict[str, Any]] = [
        {"params": params, "weight_decay": factor_weight_decay(lam, depth), "dwf": "factors", "depth": depth}
        for depth, params in sorted(by_depth.items())
    ]
    if others:
        groups.append({"params": others, "weight_decay": other_weight_decay, "dwf": "other", "depth": 0})
    return groups


def factor_penalty(model: nn.Module, lam: float) -> torch.Tensor:
    """(λ/D)·Σ_d ‖ω_d‖² summed over every factorized tensor (what the optimizer's decay minimises)."""
    total = torch.zeros((), dtype=torch.float64)
    for tensor in factorized_tensors(model):
        squares = sum(f.detach().double().pow(2).sum() for f in tensor.factors())
        total = total + lam / tensor.depth * squares
    return total


def lq_penalty(model: nn.Module, lam: float) -> torch.Tensor:
    """λ·Σ|w|^{2/D} over the collapsed weights: the penalty the factor penalty equals at balance."""
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for tensor in factorized_tensors(model):
            w = tensor.weight().detach().double()
            total = total + lam * w.abs().pow(2.0 / tensor.depth).sum()
    return total


def misalignment(model: nn.Module) -> float:
    """Relative gap (factor − Lq)/factor penalty in [0, 1]: 0 when every factor triple is balanced.

    Independent of λ; the imbalance decays like exp(−4λt/D), so this shows how far training has aligned.
    """
    factor = float(factor_penalty(model, 1.0))
    if factor == 0.0:
        return 0.0
    return max(0.0, (factor - float(lq_penalty(model, 1.0))) / factor)
