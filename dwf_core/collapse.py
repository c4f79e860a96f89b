"""Collapse a factorized model into a plain sparse one, with an accuracy-verified threshold.

Collapse multiplies the factors back (the same product the forward pass used, so nothing changes) and
removes the parametrizations: the result has the original classes and state_dict keys. Weights with
|w| < threshold become exact zeros. ``threshold="auto"`` picks the largest threshold whose zeroing costs at
most ``tolerance`` validation accuracy; ``threshold="target"`` picks the smallest threshold whose zeroing
reaches a requested sparsity over the factorized tensors (a global magnitude quantile). No fine-tuning
follows (the paper's protocol).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from dwf_core.errors import ConfigError
from dwf_core.evaluate import Labeled, accuracy_of, predict_logits
from dwf_core.factorize import factorized_tensors, unfactorize
from dwf_core.report import SparsityReport, sparsity_report

Threshold = float | Literal["auto", "target"]
DEFAULT_TOLERANCE = 0.001  # 0.1 percentage point of validation accuracy
GRID_PER_DECADE = 8
GRID_FLOOR = 1e-10


@dataclass
class CollapseResult:
    """A collapsed model and the evidence that it behaves like the factorized one."""

    model: nn.Module
    threshold: float
    names: list[str]
    report: SparsityReport
    factorized_accuracy: float | None = None
    collapsed_accuracy: float | None = None
    max_abs_logit_diff: float | None = None
    tolerance: float | None = None
    search: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the model)."""
        return {
            "threshold": self.threshold,
            "tolerance": self.tolerance,
            "factorized_val_accuracy": self.factorized_accuracy,
            "collapsed_val_accuracy": self.collapsed_accuracy,
            "max_abs_logit_diff": self.max_abs_logit_diff,
            "search": self.search,
            **self.report.to_dict(),
        }


def _check_threshold(threshold: Threshold, target_sparsity: float | None) -> None:
    if target_sparsity is not None and not (
        isinstance(target_sparsity, int | float) and math.isfinite(target_sparsity) and 0 < target_sparsity < 1
    ):
        raise ConfigError(f"target_sparsity must be in (0, 1), got {target_sparsity!r}", param="target_sparsity")
    if threshold == "auto":
        return
    if threshold == "target":
        if target_sparsity is None:
            raise ConfigError("threshold='target' needs target_sparsity", param="target_sparsity")
        return
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        raise ConfigError(
            f"threshold must be 'auto', 'target' or a finite number ≥ 0, got {threshold!r}", param="threshold"
        )
    if threshold < 0:
        raise ConfigError(f"threshold must be ≥ 0, got {threshold!r}", param="threshold")


def collapse_exact(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``model`` with every DWF parametrization replaced by its product (no thresholding)."""
    plain = copy.deepcopy(model)
    names = []
    for tensor in factorized_tensors(plain):
        cls = type(tensor.module)
        if cls.__dict__.get(tensor.attr) is not None:
            # deepcopy shares parametrize's generated class (ParametrizedLinear…) with the original, and
            # remove_parametrizations deletes the property from that class, which would break the original
            # model. Give the copy a private clone of the class first.
            tensor.module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        unfactorize(tensor.module, tensor.attr)
        names.append(tensor.name)
    return plain, names


def apply_threshold(targets: Mapping[str, torch.Tensor], dense: Mapping[str, torch.Tensor], threshold: float) -> None:
    """Set each target parameter to its ``dense`` value with |w| < ``threshold`` replaced by +0.0."""
    with torch.no_grad():
        for name, param in targets.items():
            value = dense[name]
            # masked_fill writes +0.0, so zeroed entries are true zeros for the sparse encoders.
            param.copy_(value.masked_fill(value.abs() < threshold, 0.0) if threshold > 0 else value)


def target_threshold(weights: list[torch.Tensor], target_sparsity: float) -> float:
    """The smallest threshold t such that zeroing |w| < t makes at least ``target_sparsity`` of all weights zero.

    A global magnitude quantile: with k = ⌈S·N⌉, t is the next float above the k-th smallest |w|, so exactly the
    k smallest magnitudes fall below it (more only when magnitudes tie at the cut).
    """
    if not weights:
        return 0.0
    # The cut is computed in the weights' own dtype, so the returned float compares exactly against them.
    dtype = weights[0].dtype
    for w in weights[1:]:
        dtype = torch.promote_types(dtype, w.dtype)
    flat = torch.cat([w.detach().reshape(-1).abs().to("cpu", dtype) for w in weights])
    k = math.ceil(target_sparsity * flat.numel() - 1e-9)
    if k <= 0:
        return 0.0
    kth = torch.kthvalue(flat, min(k, flat.numel())).values
    return float(torch.nextafter(kth, torch.tensor(float("inf"), dtype=dtype)))


def threshold_grid(weights: list[torch.Tensor]) -> list[float]:
    """Log-spaced candidate thresholds from 1e-10 to just above the largest |w| (8 per decade)."""
    top = max((float(w.abs().max()) for w in weights if w.numel()), default=0.0)
    if top <= GRID_FLOOR:
        return [0.0]
    lo, hi = math.log10(GRID_FLOOR), math.log10(top) + 1.0 / GRID_PER_DECADE
    steps = math.ceil((hi - lo) * GRID_PER_DECADE)
    return [0.0] + [10 ** (lo + i * (hi - lo) / steps) for i in range(steps + 1)]


def collapse_and_verify(
    model: nn.Module,
    data: Labeled | None = None,
    threshold: Threshold = "auto",
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 1000,
    target_sparsity: float | None = None,
) -> CollapseResult:
    """Collapse ``model`` and, given validation data, choose or check the threshold.

    Args:
        model: a factorized model (left unchanged; the result is a copy).
        data: validation split used to pick "auto" and to report accuracies and max |Δlogit|.
        threshold: "auto", "target" or a number (|w| below it becomes 0).
        tolerance: largest allowed validation-accuracy drop for "auto" (fraction, 0.001 = 0.1 pp).
        batch_size: inference batch size.
        target_sparsity: for "target": the fraction of the factorized weights to zero (global magnitude
            quantile; the achieved sparsity is at least this, exceeding it only on ties).

    Returns:
        A ``CollapseResult`` whose ``model`` is a plain module with the original classes and keys.

    Raises:
        ConfigError: bad threshold/tolerance/target, "auto" without data, "target" without a target, or a
            model with nothing factorized.
    """
    _check_threshold(threshold, target_sparsity)
    if not 0.0 <= tolerance < 1.0:
        raise ConfigError(f"tolerance must be in [0, 1), got {tolerance!r}", param="tolerance")
    if not factorized_tensors(model):
        raise ConfigError("model has no factorized tensors; call dwf_core.factorize first", param="model")
    if threshold == "auto" and data is None:
        raise ConfigError("threshold='auto' needs validation data (data=...) to verify accuracy", param="threshold")
    plain, names = collapse_exact(model)
    targets = {name: plain.get_parameter(name) for name in names}
    dense = {name: p.detach().clone() for name, p in targets.items()}
    if threshold == "target":
        assert target_sparsity is not None
        threshold = target_threshold(list(dense.values()), target_sparsity)
    if data is None:
        assert threshold != "auto"
        apply_threshold(targets, dense, float(threshold))
        return CollapseResult(plain, float(threshold), names, sparsity_report(plain, names=names))

    reference = predict_logits(model, data.x, batch_size=batch_size)
    ref_acc = accuracy_of(reference, data.y)
    search: list[dict[str, float]] = []

    def acc_at(t: float) -> float:
        apply_threshold(targets, dense, t)
        acc = accuracy_of(predict_logits(plain, data.x, batch_size=batch_size), data.y)
        search.append({"threshold": t, "val_accuracy": acc})
        return acc

    if threshold == "auto":
        grid = threshold_grid(list(dense.values()))
        # Binary search for the last grid point within tolerance; accuracy falls (nearly) monotonically
        # with the threshold, and the chosen point is always one that was evaluated and passed.
        lo, hi = 0, len(grid)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ref_acc - acc_at(grid[mid]) <= tolerance:
                lo = mid
            else:
                hi = mid
        chosen = grid[lo]
    else:
        chosen = float(threshold)
    apply_threshold(targets, dense, chosen)
    logits = predict_logits(plain, data.x, batch_size=batch_size)
    return CollapseResult(
        model=plain,
        threshold=chosen,
        names=names,
        report=sparsity_report(plain, names=names),
        factorized_accuracy=ref_acc,
        collapsed_accuracy=accuracy_of(logits, data.y),
        max_abs_logit_diff=float((logits - reference).abs().max()) if logits.numel() else 0.0,
        tolerance=tolerance if threshold == "auto" else None,
        search=search,
    )


def collapse(
    model: nn.Module,
    threshold: Threshold = "auto",
    *,
    data: Labeled | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    target_sparsity: float | None = None,
) -> nn.Module:
    """Return a plain copy of a factorized ``model``: products of the factors, exact zeros below threshold.

    Args:
        model: a model after ``factorize`` (unchanged by this call).
        threshold: "auto" (default; needs ``data``), "target" (needs ``target_sparsity``) or a number.
        data: validation split for "auto".
        tolerance: largest validation-accuracy drop "auto" may cost (0.001 = 0.1 pp).
        target_sparsity: fraction of the factorized weights that "target" zeroes (global magnitude quantile).

    Returns:
        A module of the original classes, without parametrizations, whose ``state_dict`` keys equal those
        of the model before ``factorize``. Use ``collapse_and_verify`` for the accuracies and max |Δlogit|.

    Raises:
        ConfigError: see ``collapse_and_verify``.
    """
    return collapse_and_verify(model, data, threshold, tolerance=tolerance, target_sparsity=target_sparsity).model
