"""How much of a model DWF can reach: parameters that train, and those that get factorized.

A model whose weights mostly sit in frozen tensors (e.g. an ONNX graph whose MatMul weights stayed buffers) can
be made "sparse" only in the little that trains; the user must hear that before reading any sparsity number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from dwf_core.factorize import select_parameters

# Buffers that hold statistics rather than weights: not counted as parameters that could train.
_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
# Below this share of trainable parameters the job warns (issue: "less than half of a model's parameters").
MIN_TRAINABLE_SHARE = 0.5


@dataclass(frozen=True)
class Coverage:
    """Parameter counts (elements) of a model before factorization."""

    total: int  # trainable parameters + frozen float tensors that are not statistics or scalars
    trainable: int
    factorized: int  # the parameters the selection (default or include/exclude globs) factorizes
    frozen: int

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    @property
    def factorized_share(self) -> float:
        return self.factorized / self.total if self.total else 0.0

    def warning(self) -> str | None:
        """A sentence for the user when less than half of the parameters can train, else None."""
        if self.trainable_share >= MIN_TRAINABLE_SHARE:
            return None
        return (
            f"only {100 * self.trainable_share:.0f}% of the model's {self.total:,} parameters can train "
            f"({self.frozen:,} sit in frozen tensors the sparsification cannot change); the sparsity reported "
            "covers the trainable part only"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "trainable_share": self.trainable_share,
            "factorized_share": self.factorized_share,
            "warning": self.warning(),
        }

    def summary(self) -> str:
        """One line for logs and job events."""
        return (
            f"{self.total:,} parameters, {100 * self.trainable_share:.0f}% trainable, "
            f"{100 * self.factorized_share:.0f}% factorized"
        )


def coverage(model: nn.Module, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> Coverage:
    """Count what trains and what DWF factorizes in ``model`` (unfactorized) with this selection."""
    params = dict(model.named_parameters())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    frozen = sum(p.numel() for p in params.values() if not p.requires_grad)
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and buffer.numel() > 1 and not name.endswith(_STATISTICS):
            frozen += buffer.numel()
    factorized = sum(params[name].numel() for name in select_parameters(model, include, exclude) if name in params)
    return Coverage(total=trainable + frozen, trainable=trainable, factorized=factorized, frozen=frozen)
