"""Collapse a gated model into a plain one and remove units: those the penalty zeroed, then to a MAC budget.

Collapse = multiply any DWF factors back, fold the gates into rows and biases (``fold_gates``): the plain model
computes what the gated one did. A unit's size is ‖(ŵ_row, b̂)‖₂ of its folded weights. Units below ``EPSILON``
(float32 machine epsilon, the D-Gating paper's ε for filters and features) are removed always; with a budget, the
remaining units go next, across all layers, in order of their size relative to the RMS size of their layer, until
the kept MACs fit. Relative, because sizes scale with fan-in: on LeNet-5 after 3 epochs at λ 2e-3 (the penalty had
not yet separated the units), the raw order cut fc1 (800 inputs per row, small weights) to 1 unit and kept 13% val
accuracy at 10% of the MACs, the relative order 87%; once the penalty has separated them (λ 1e-2) both orders give
the same accuracy at every budget from 50% to 5%. Removing sets the
unit's row and bias to exact zeros, so its output is exactly zero and a compaction can drop it with the next
layer's input columns. Each gated layer keeps at least its largest unit, so a cut never disconnects the model.

With a ``multiple`` m > 1, a budget's cut also rounds each layer's kept units down to a multiple of m (a layer that
keeps m or fewer is left as it is) by removing that layer's next-smallest units: the kernels that run the compact
model compute units in blocks (onnxruntime's CPU GEMM here: 16 output units; 54 cost what 64 do), so leftovers
beyond a block cost a whole block. Attention heads are not rounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dwf_core.collapse import collapse_and_verify
from dwf_core.factorize import factorized_tensors
from dwf_core.structured.gates import bias_of, fold_gates, weight_of
from dwf_core.structured.heads import (
    head_squares,
    head_state,
    head_weight_count,
    is_head_layer,
    restore_heads,
    zero_head,
)
from dwf_core.structured.macs import MacReport, count_macs

EPSILON = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class Unit:
    """One removable unit: its layer, index, size ‖(ŵ_row, b̂)‖₂ and that size ÷ the RMS size of its layer."""

    layer: str
    index: int
    size: float
    relative: float = 1.0


def plain_copy(model: nn.Module) -> tuple[nn.Module, dict[str, str | None]]:
    """A plain copy of a gated (and possibly factorized) model: factors multiplied, gates folded.

    Returns the copy (original classes and state_dict keys) and the gated modules (``fold_gates``'s answer).
    """
    if factorized_tensors(model):
        plain = collapse_and_verify(model, None, 0.0).model
    else:
        import copy

        plain = copy.deepcopy(model)
    return plain, fold_gates(plain)


def unit_sizes(model: nn.Module, layers: Iterable[str]) -> list[Unit]:
    """Every unit of the named (plain) layers with its size, in layer order."""
    units: list[Unit] = []
    with torch.no_grad():
        for name in layers:
            if is_head_layer(model, name):  # an attention module: its units are heads
                squares = head_squares(model, name)
            else:
                module = model.get_submodule(name)
                weight, bias = weight_of(module).detach(), bias_of(module)
                squares = weight.double().pow(2).reshape(weight.shape[0], -1).sum(dim=1)
                if bias is not None:
                    squares = squares + bias.detach().double().pow(2)
            rms = float(squares.mean().sqrt()) or 1.0
            units.extend(Unit(name, i, float(s), float(s) / rms) for i, s in enumerate(squares.sqrt()))
    return units


def unit_weight_count(model: nn.Module, layer: str, index: int) -> int:
    """How many weights (row and bias; a head's V rows and bias) the size of unit ``index`` of ``layer`` sums over."""
    if is_head_layer(model, layer):
        return head_weight_count(model, layer)
    module = model.get_submodule(layer)
    return weight_of(module)[index].numel() + (1 if bias_of(module) is not None else 0)


def zero_unit(model: nn.Module, layer: str, index: int, producer: str | None = None) -> None:
    """Set unit ``index`` of ``layer`` to exact zeros: its row and bias, and the producer's row and bias when the
    layer is a BatchNorm gated for it (γ = β = 0 makes the norm output 0; the zero row lets a compaction drop the
    producer's channel too). For an attention layer, ``index`` is a head: its Q, K and V rows and biases go."""
    if is_head_layer(model, layer):
        zero_head(model, layer, index)
        return
    with torch.no_grad():
        for name in (layer, producer):
            if name is None:
                continue
            module = model.get_submodule(name)
            weight_of(module)[index].zero_()
            bias = bias_of(module)
            if bias is not None:
                bias[index] = 0.0


class UnitCutter:
    """Removes units of a plain model in a fixed order; ``cut(k)`` restores the weights, then removes the first k.

    The order: units below ``EPSILON`` (always removed), then the rest by relative size, smallest first, leaving out
    each layer's largest unit.
    """

    def __init__(
        self, model: nn.Module, layers: Mapping[str, str | None], probe: torch.Tensor, multiple: int = 1
    ) -> None:
        self.model = model
        self.probe = probe
        self.layers = dict(layers)
        self.multiple = multiple
        # Every module whose rows a removal zeroes: the gated ones and the layers feeding gated BatchNorms.
        touched = list(layers) + [p for p in layers.values() if p is not None]
        self.modules = {name: model.get_submodule(name) for name in touched}
        # Per module, one entry per unit: rows and biases (for an attention layer, each head's Q, K, V rows).
        self.saved: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for name, module in self.modules.items():
            if is_head_layer(model, name):
                self.saved[name] = head_state(model, name)
                continue
            bias = bias_of(module)
            self.saved[name] = (weight_of(module).detach().clone(), None if bias is None else bias.detach().clone())
        units = unit_sizes(model, layers)
        largest = {name: max((u for u in units if u.layer == name), key=lambda u: u.size) for name in layers}
        keep = {(u.layer, u.index) for u in largest.values()}
        self.natural = [u for u in units if u.size < EPSILON and (u.layer, u.index) not in keep]
        rest = [u for u in units if u.size >= EPSILON and (u.layer, u.index) not in keep]
        self.order = sorted(rest, key=lambda u: u.relative)
        self.removed = 0
        self.rounding: list[Unit] = []  # the units the last cut removed to round layers to the multiple

    def _rounding(self, k: int) -> list[Unit]:
        """The units that round each layer's kept count down to ``multiple`` after removing ``order[:k]``: the
        layer's next-smallest ones. Kept MACs still fall monotonically with k (the removed set only grows)."""
        if self.multiple <= 1:
            return []
        extra: list[Unit] = []
        for name in self.layers:
            if is_head_layer(self.model, name):
                continue
            candidates = [u for u in self.order[k:] if u.layer == name]
            kept = len(candidates) + 1  # and the layer's largest unit, never in the order
            if kept > self.multiple:
                extra.extend(candidates[: kept % self.multiple])
        return extra

    def removed_units(self) -> list[Unit]:
        """Every unit the current cut removed: below ε, the budget's, the rounding's."""
        return self.natural + self.order[: self.removed] + self.rounding

    def cut(self, k: int, *, rounded: bool = False) -> MacReport:
        """Remove the natural units and the ``k`` smallest others (from the saved weights), and with ``rounded`` the
        units that round each layer to ``multiple``; returns the MACs."""
        with torch.no_grad():
            for name, module in self.modules.items():
                weight, bias = self.saved[name]
                if is_head_layer(self.model, name):
                    restore_heads(self.model, name, weight, bias)
                    continue
                weight_of(module).copy_(weight)
                live_bias = bias_of(module)
                if bias is not None and live_bias is not None:
                    live_bias.copy_(bias)
            self.removed = k
            self.rounding = self._rounding(k) if rounded else []
            for unit in self.removed_units():
                zero_unit(self.model, unit.layer, unit.index, self.layers[unit.layer])
        return count_macs(self.model, self.probe)

    def cut_to(self, budget: float | None) -> MacReport:
        """Remove the fewest units for kept MACs ≤ ``budget`` × dense (all removable ones if it cannot be met);
        ``None``: the natural units only. Kept MACs fall monotonically with k, so a bisection finds the point. With a
        budget, each layer's units are also rounded to ``multiple``."""
        rounded = budget is not None
        report = self.cut(0, rounded=rounded)
        if budget is None or report.fraction <= budget:
            return report
        lo, hi = 0, len(self.order)  # fraction(lo) > budget; find the smallest hi with fraction(hi) ≤ budget
        if self.cut(hi, rounded=True).fraction > budget:
            return count_macs(self.model, self.probe)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.cut(mid, rounded=True).fraction <= budget:
                hi = mid
            else:
                lo = mid
        return self.cut(hi, rounded=True)

    def threshold(self) -> float:
        """The relative size of the last unit the budget removed (0 when it removed none beyond those below ε)."""
        return self.order[self.removed - 1].relative if self.removed else 0.0

    def units_removed(self) -> int:
        """How many units the current cut removed."""
        return len(self.removed_units())
