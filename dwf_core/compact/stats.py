"""Per-channel range of what each Linear/Conv reads, to find the constant value of a channel whose producers died.

A unit whose incoming weights are all zero still outputs a constant (its bias through BatchNorm and the
activation); the next layer sees that constant and can take it into its bias. The constant is measured here on
real and random inputs rather than derived, because the path in between (BatchNorm, activation, pooling) is
arbitrary code; the structural reason that it is constant is checked by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ChannelRange:
    """Smallest and largest value each input channel of one layer took over every position and sample."""

    low: torch.Tensor
    high: torch.Tensor
    # A conv input's spatial size (H, W…), or None for a Linear or when calls differed in size.
    spatial: tuple[int, ...] | None = None

    def constants(self) -> list[float | None]:
        """Per channel: its value if it never varied (up to float rounding), else None."""
        scale = torch.maximum(self.low.abs(), self.high.abs()).clamp(min=1.0)
        fixed = ((self.high - self.low) <= 1e-6 * scale).tolist()
        middle = ((self.low + self.high) / 2).tolist()
        return [value if ok else None for ok, value in zip(fixed, middle, strict=True)]


def _per_channel(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) over everything but the channel axis: the last for a Linear, axis 1 for a conv."""
    x = x.detach()
    flat = x.reshape(-1, x.shape[-1]) if isinstance(module, nn.Linear) else x.transpose(0, 1).reshape(x.shape[1], -1).T
    return flat.amin(dim=0), flat.amax(dim=0)


def input_ranges(
    model: nn.Module, readers: Iterable[nn.Module], batches: Sequence[torch.Tensor]
) -> dict[nn.Module, ChannelRange]:
    """Run ``model`` on each batch and record, per reader, the range of every input channel."""
    ranges: dict[nn.Module, ChannelRange] = {}

    def hook(module: nn.Module, args: tuple[object, ...]) -> None:
        x = args[0]
        if not isinstance(x, torch.Tensor):
            return
        low, high = _per_channel(module, x)
        spatial = None if isinstance(module, nn.Linear) else tuple(x.shape[2:])
        seen = ranges.get(module)
        if seen is not None and seen.low.shape == low.shape:
            low, high = torch.minimum(seen.low, low), torch.maximum(seen.high, high)
            spatial = spatial if seen.spatial == spatial else None
        ranges[module] = ChannelRange(low, high, spatial)

    handles = [m.register_forward_pre_hook(hook) for m in set(readers)]
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return ranges
