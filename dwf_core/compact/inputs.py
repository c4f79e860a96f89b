"""Dead inputs of a Linear layer: columns that are zero in every row, dropped by gathering the live ones.

A group of coupled channels can only be removed where a producer owns them; the columns of a Linear that reads
the model's own input (LeNet-300-100's fc1 reads pixels) have none, and the model must keep taking the same
input. ``IndexedLinear`` reads only the live columns (an ONNX Gather), so the matrix shrinks anyway.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

# Below this share of dead columns the Gather's copy costs about what the smaller matmul saves.
MIN_DEAD_FRACTION = 0.1


class IndexedLinear(nn.Linear):
    """A Linear that reads only ``input_index`` of its input's last axis (the live columns)."""

    input_index: torch.Tensor

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True) -> None:
        """An empty layer with ``in_features`` live columns; ``input_index`` is filled by ``load_state_dict``."""
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("input_index", torch.zeros(in_features, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``linear(x[..., input_index])``, gathering whole rows of ``xᵀ``.

        onnxruntime's Gather copies contiguous rows fast and single elements slowly: on the DWF LeNet-300-100
        (369 of 784 inputs alive, one thread, batch 64) the row form ran in 0.065 ms, a Gather on the last axis
        in 0.125 ms, the full 784-column layer in 0.075 ms and the dense model in 0.193 ms. The gathered rows go
        into one ``linear`` (an ONNX Gemm reading them transposed, bias and a following ReLU fused) rather than a
        MatMul, a Transpose back and an Add: 0.0124 instead of 0.0157 ms at batch 1 and 0.0567 instead of
        0.058 ms at batch 64 on the compact "both" LeNet-300-100 (395 inputs, 62/27 units; dense 0.022 / 0.318 ms).
        """
        rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
        out = nn.functional.linear(rows.t().index_select(0, self.input_index).t(), self.weight, self.bias)
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, keep: torch.Tensor) -> IndexedLinear:
        """The layer ``linear`` restricted to the columns ``keep`` (sorted int64 indices)."""
        out = cls(len(keep), linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            out.weight.copy_(linear.weight[:, keep])
            if linear.bias is not None:
                out.bias.copy_(linear.bias)
            out.input_index.copy_(keep)
        return out.to(linear.weight.device)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding submodule ``name`` and the attribute it is stored under."""
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def select_live_inputs(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Replace every plain Linear with at least ``MIN_DEAD_FRACTION`` zero columns by an ``IndexedLinear``.

    Returns:
        For each replaced layer: (columns before, columns kept). At least one column is kept, so no tensor
        becomes empty.
    """
    changed: dict[str, tuple[int, int]] = {}
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear:  # subclasses may override forward; IndexedLinear is already done
            continue
        live = module.weight.detach().ne(0).any(dim=0)
        dead = int((~live).sum())
        if dead < MIN_DEAD_FRACTION * module.in_features:
            continue
        keep = live.nonzero().flatten()
        if keep.numel() == 0:
            keep = torch.zeros(1, dtype=torch.int64, device=live.device)
        parent, attr = _parent(model, name)
        setattr(parent, attr, IndexedLinear.from_linear(module, keep))
        changed[name] = (module.in_features, int(keep.numel()))
    return changed


class OffsetConv2d(nn.Conv2d):
    """A Conv2d plus a fixed map added to its output: what removed constant input channels contributed.

    A channel that carries a constant c into a zero-padded conv contributes c·(the kernel taps inside the image):
    the same in the interior, less at the borders. That map depends on no input, so it is stored once per output
    position (for the input size the job used) and the channel can go.
    """

    output_offset: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``conv(x) + output_offset``."""
        return super().forward(x) + self.output_offset


def add_output_offset(conv: nn.Conv2d, offset: torch.Tensor) -> None:
    """Add ``offset`` (out_channels, H_out, W_out) to the conv's output from now on."""
    if not isinstance(conv, OffsetConv2d):
        conv.__class__ = OffsetConv2d  # the same module with one more buffer and forward step
        conv.register_buffer("output_offset", torch.zeros_like(offset))
    target = cast(OffsetConv2d, conv)
    target.output_offset = target.output_offset + offset
