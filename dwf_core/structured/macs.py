"""Multiply-accumulates of a model's Linear and Conv layers, dense and as a compact model would keep them.

One forward pass with hooks on every Linear/Conv records each call's input and output. Dense MACs per sample are
positions × units × inputs-per-group × kernel. A compact model keeps, per layer, only the units whose weight row
touches a live input, and the inputs that are live (non-zero somewhere on the probe) and read by a kept unit.
During this pass each layer's output is rewritten to show liveness rather than values: a kept unit outputs a
strictly positive value (its output shifted above zero, so no ReLU can silence it by chance), a removed one an
exact zero (a zero row outputs a constant, which a compaction folds into the next bias). Zeros then travel through
pools, flattens and ReLUs to the next layer's input columns without a graph walk; a residual add with a live branch
keeps the channel live, as a compaction must. ``nn.MultiheadAttention`` runs its Q, K, V and output projections
without calling a Linear: they are counted per head (a head is kept unless its V rows or output columns are all
zero, as the compaction decides). Other operations (attention matmuls, norms) are not counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dwf_core.structured.gates import GATED_TYPES, unit_shape, units_of, weight_of
from dwf_core.structured.heads import attention_macs

PROBE_SAMPLES = 8


@dataclass(frozen=True)
class LayerMacs:
    """MACs per sample of one Linear/Conv layer and the units/inputs a compact model keeps."""

    name: str
    dense: int
    kept: int
    units: int
    units_total: int
    inputs: int
    inputs_total: int


@dataclass(frozen=True)
class MacReport:
    """Per-layer and total MACs per sample."""

    layers: list[LayerMacs]

    @property
    def dense(self) -> int:
        """MACs of the dense model."""
        return sum(layer.dense for layer in self.layers)

    @property
    def kept(self) -> int:
        """MACs the compact model keeps."""
        return sum(layer.kept for layer in self.layers)

    @property
    def fraction(self) -> float:
        """kept / dense (1.0 for a model without Linear/Conv layers)."""
        return self.kept / self.dense if self.dense else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "dense_macs": self.dense,
            "kept_macs": self.kept,
            "mac_fraction": self.fraction,
            "layers": [asdict(layer) for layer in self.layers],
        }


def probe_input(example: torch.Tensor, samples: int = PROBE_SAMPLES, seed: int = 0) -> torch.Tensor:
    """Inputs for counting: standard-normal floats shaped like ``example``'s samples, or ``example`` itself (ids).

    Random inputs, not data: real images have pixels that are always zero (MNIST's border), which would count the
    first layer's columns for them as removed although no compaction removes inputs.
    """
    if not example.dtype.is_floating_point:
        return example[:samples]
    gen = torch.Generator().manual_seed(seed)
    shape = (samples, *example.shape[1:])
    return torch.randn(shape, generator=gen).to(example.dtype)


def _live_inputs(module: nn.Module, x: torch.Tensor, in_total: int) -> torch.Tensor:
    """Bool per input feature/channel: non-zero somewhere in ``x``."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, in_total).ne(0).any(dim=0)
    batched = x.dim() == len(getattr(module, "kernel_size", ())) + 2
    channels_first = x.transpose(0, 1) if batched else x
    return channels_first.reshape(in_total, -1).ne(0).any(dim=1)


def _layer(
    name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: int
) -> tuple[LayerMacs, torch.Tensor]:
    """The layer's MACs and a bool per unit: kept."""
    weight = weight_of(module).detach()
    units = units_of(module)
    groups = int(getattr(module, "groups", 1))
    in_per_group = int(weight.shape[1])
    kernel = math.prod(weight.shape[2:])
    positions = y.numel() // (units * samples)
    live = _live_inputs(module, x.detach(), in_per_group * groups)
    # conn[g, unit, input]: a kept unit of group g reads that live input with a non-zero weight somewhere.
    touches = weight.ne(0).reshape(units, in_per_group, -1).any(dim=2)
    conn = touches.reshape(groups, units // groups, in_per_group) & live.reshape(groups, 1, in_per_group)
    kept_units = conn.any(dim=2).sum(dim=1)
    kept_inputs = conn.any(dim=1).sum(dim=1)
    layer = LayerMacs(
        name=name,
        dense=positions * units * in_per_group * kernel,
        kept=positions * kernel * int((kept_units * kept_inputs).sum()),
        units=int(kept_units.sum()),
        units_total=units,
        inputs=int(kept_inputs.sum()),
        inputs_total=in_per_group * groups,
    )
    return layer, conn.any(dim=2).reshape(units)


def count_macs(model: nn.Module, probe: torch.Tensor) -> MacReport:
    """MACs per sample of every Linear/Conv call in a forward pass of ``model`` on ``probe`` (see ``probe_input``).

    Args:
        model: a plain or gated model (gated units count by their stored weights; fold the gates first).
        probe: a batch of inputs.

    Returns:
        A ``MacReport``; a module called several times counts once per call (same name repeated).
    """
    calls: list[LayerMacs] = []
    samples = int(probe.shape[0]) if probe.dim() else 1
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, GATED_TYPES):

            def record(m: nn.Module, inputs: Any, output: torch.Tensor, name: str = name) -> torch.Tensor:
                layer, kept = _layer(name, m, inputs[0], output, samples)
                calls.append(layer)
                shift = output.abs().amax() + 1.0
                return torch.where(kept.view(unit_shape(m)), output + shift, torch.zeros_like(output))

            handles.append(module.register_forward_hook(record))
        elif isinstance(module, nn.MultiheadAttention):  # runs its projections itself: no Linear call to hook

            def record_attention(
                m: nn.MultiheadAttention, args: Any, kwargs: dict[str, Any], output: Any, name: str = name
            ) -> None:
                dense, kept, heads = attention_macs(m, args, kwargs)
                embed = m.embed_dim
                calls.append(LayerMacs(name, dense // samples, kept // samples, heads, m.num_heads, embed, embed))

            handles.append(module.register_forward_hook(record_attention, with_kwargs=True))
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad():
            model(probe.to(device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return MacReport(calls)
