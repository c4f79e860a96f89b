"""Sparsity report: per tensor and global counts of non-zeros, sparsity and compression ratio."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from dwf_core.factorize import factorized_tensors, select_parameters


@dataclass(frozen=True)
class TensorSparsity:
    """Counts for one tensor."""

    name: str
    shape: tuple[int, ...]
    total: int
    nnz: int

    @property
    def sparsity(self) -> float:
        """Fraction of exact (or below-threshold) zeros."""
        return 1.0 - self.nnz / self.total if self.total else 0.0


def _cr(total: int, nnz: int) -> float:
    return total / nnz if nnz else float("inf")


@dataclass(frozen=True)
class SparsityReport:
    """Counts over the factorized (target) tensors and over all parameters.

    ``compression_ratio`` = weights in the target tensors / non-zeros among them (∞ when all are zero).
    """

    layers: list[TensorSparsity]
    total_all: int
    nnz_all: int
    threshold: float
    names: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Weights in the target tensors."""
        return sum(t.total for t in self.layers)

    @property
    def nnz(self) -> int:
        """Non-zero weights in the target tensors."""
        return sum(t.nnz for t in self.layers)

    @property
    def sparsity(self) -> float:
        """Global sparsity of the target tensors."""
        return 1.0 - self.nnz / self.total if self.total else 0.0

    @property
    def compression_ratio(self) -> float:
        """total / nnz over the target tensors."""
        return _cr(self.total, self.nnz)

    @property
    def sparsity_all(self) -> float:
        """Sparsity over every parameter (biases and normalisation included)."""
        return 1.0 - self.nnz_all / self.total_all if self.total_all else 0.0

    @property
    def compression_ratio_all(self) -> float:
        """total / nnz over every parameter."""
        return _cr(self.total_all, self.nnz_all)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (∞ compression is written as null by the JSON writer)."""
        return {
            "threshold": self.threshold,
            "total": self.total,
            "nnz": self.nnz,
            "sparsity": self.sparsity,
            "compression_ratio": self.compression_ratio,
            "total_all": self.total_all,
            "nnz_all": self.nnz_all,
            "sparsity_all": self.sparsity_all,
            "compression_ratio_all": self.compression_ratio_all,
            "layers": [
                {
                    **{k: v for k, v in asdict(t).items() if k != "shape"},
                    "shape": list(t.shape),
                    "sparsity": t.sparsity,
                }
                for t in self.layers
            ],
        }


def _count(tensor: torch.Tensor, threshold: float) -> int:
    if threshold > 0:
        return int((tensor.detach().abs() >= threshold).sum())
    return int(torch.count_nonzero(tensor.detach()))


def sparsity_report(model: nn.Module, *, names: Sequence[str] | None = None, threshold: float = 0.0) -> SparsityReport:
    """Count non-zeros per tensor of ``model``.

    Args:
        model: a factorized model (its collapsed weights are counted) or a plain/collapsed one.
        names: the target tensors (state_dict names). Default: the factorized tensors if the model has any,
            else the default selection (``select_parameters``: every weight matrix), as on a collapsed model.
        threshold: values with |w| < threshold count as zero (0: exact zeros only).

    Returns:
        A ``SparsityReport``.
    """
    with torch.no_grad():
        factorized = {t.name: t.weight() for t in factorized_tensors(model)}
        targets = list(names) if names is not None else (list(factorized) or select_parameters(model))
        state: dict[str, torch.Tensor] = dict(model.named_parameters())
        state.update(factorized)
        layers = []
        for name in targets:
            tensor = state[name]
            layers.append(TensorSparsity(name, tuple(tensor.shape), tensor.numel(), _count(tensor, threshold)))
        # Over all parameters: plain ones as they are, each factorized tensor once as its collapsed weight.
        factor_ids = {id(f) for t in factorized_tensors(model) for f in t.factors()}
        plain = [p for p in model.parameters() if id(p) not in factor_ids]
        all_tensors = plain + list(factorized.values())
        total_all = sum(t.numel() for t in all_tensors)
        nnz_all = sum(_count(t, threshold) for t in all_tensors)
    return SparsityReport(layers, total_all, nnz_all, threshold, targets)
