"""D−1 gates per attention head (D-Gating's attention groups): attach, fold, size, remove, and count their MACs.

A head's gates scale the output of its value projection, rows and bias alike. Attention is linear in V and every
attention row sums to 1, so that scales the head's output: at gate product 1 nothing changes, at 0 the head outputs
exactly zero. Where the scaling happens depends on the layout (``dwf_core.compact.heads``): timm's ``Attention`` and
BERT-style attention call a Linear that holds V (``qkv``, ``value``), so a forward hook on it multiplies each head's
block of V; ``nn.MultiheadAttention`` reads its weights itself, so it becomes ``HeadsMultiheadAttention`` (same
parameters and keys), which multiplies each head's output. The gates are ``dwf_gates`` (D−1, heads) on the attention
module, so what lists, decays, masks and penalises unit gates handles them as well (``gates.gated_modules``,
``penalty.param_groups``, ``unit_cut``). The Q, K and V projections take the decay 2λ/D with them: V's rows carry
the group, and two of the three layouts pack Q, K and V into one tensor, so all three layouts decay all three.

For the cut a head is one unit: its size is ‖(V rows, V bias)‖ after folding, and removing it zeroes its Q, K and V
rows and biases (its output is exactly zero whatever Q and K were), so the MAC count drops its projections and the
compaction drops the head.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from dwf_core.compact.heads import HeadLayout, find_attention, layout_at, mha_layout
from dwf_core.compact.mha import GATES_ATTR, HeadsMultiheadAttention, supports_heads
from dwf_core.errors import ConfigError

# On a head-gated attention module: its number of heads (marks it as gated per head, not per output unit).
HEADS_ATTR = "dwf_gated_heads"
# On the Linear that holds V (timm qkv, transformers value): the attention module whose gates scale it, and
# (parts packed in the Linear, V's part). Plain attributes, not submodules, so state_dict and named_modules ignore
# them while copy.deepcopy maps them onto the copy's own attention module.
_OWNER = "_dwf_head_owner"
_PART = "_dwf_value_part"


def _value_name(layout: HeadLayout) -> str:
    """The parameter name that holds V's rows (what include/exclude globs see)."""
    index, _ = layout.value
    packed = layout.projections[index]
    if packed.owner is layout.module:
        return f"{layout.name}.{packed.weight}"
    owner = next(n for n, m in layout.module.named_children() if m is packed.owner)
    return f"{layout.name}.{owner}.{packed.weight}"


def gateable_attention(
    model: nn.Module, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> list[HeadLayout]:
    """Attention modules whose heads can be gated: a known layout whose V weight passes the globs."""
    chosen = []
    for layout in find_attention(model)[0]:
        full = _value_name(layout)
        if include and not any(fnmatch.fnmatchcase(full, p) for p in include):
            continue
        if exclude and any(fnmatch.fnmatchcase(full, p) for p in exclude):
            continue
        chosen.append(layout)
    return chosen


def projection_layers(layouts: Sequence[HeadLayout]) -> set[nn.Module]:
    """The Linears holding Q, K or V rows of ``layouts``: gated per head, never per output unit as well."""
    return {p.owner for layout in layouts for p in layout.projections if isinstance(p.owner, nn.Linear)}


def _scale_value(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on V's Linear: each head's block of V times the head's gate product."""
    owner: nn.Module = module.__dict__[_OWNER]
    parts, part = module.__dict__[_PART]
    product = getattr(owner, GATES_ATTR).prod(dim=0).to(output.dtype)
    heads = product.numel()
    head_dim = output.shape[-1] // (parts * heads)
    ones = torch.ones_like(product)
    scale = torch.stack([product if p == part else ones for p in range(parts)])
    return output * scale.repeat_interleave(head_dim, dim=1).reshape(-1)


def attach_head_gates(layouts: Sequence[HeadLayout], depth: int) -> list[str]:
    """Give each attention of ``layouts`` D−1 gates per head, all at 1; returns their names."""
    names = []
    for layout in layouts:
        index, part = layout.value
        packed = layout.projections[index]
        weight = getattr(packed.owner, packed.weight)
        gates = torch.ones(depth - 1, layout.heads, dtype=weight.dtype, device=weight.device)
        module = layout.module
        module.register_parameter(GATES_ATTR, nn.Parameter(gates))
        setattr(module, HEADS_ATTR, layout.heads)
        if layout.kind == "mha":
            module.__class__ = HeadsMultiheadAttention  # applies dwf_gates itself
        else:
            object.__setattr__(packed.owner, _OWNER, module)
            object.__setattr__(packed.owner, _PART, (packed.parts, part))
            packed.owner.register_forward_hook(_scale_value)
        names.append(layout.name)
    return names


def is_head_gated(module: nn.Module) -> bool:
    """Whether ``module`` carries gates per attention head."""
    return isinstance(getattr(module, HEADS_ATTR, None), int) and hasattr(module, GATES_ATTR)


def _layout(model: nn.Module, name: str) -> HeadLayout:
    layout = layout_at(model, name)
    if layout is None:
        raise ConfigError(f"{name} is no attention module with a known head layout", param="model")
    return layout


def head_group_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The Q, K, V weights and biases of a head-gated attention that are not factorized (factors decay already)."""
    found: list[nn.Parameter] = []
    for packed in _layout(model, name).projections:
        for attr in (packed.weight, packed.bias):
            param = packed.owner._parameters.get(attr)
            if isinstance(param, nn.Parameter) and not parametrize.is_parametrized(packed.owner, attr):
                found.append(param)
    return found


def fold_head_gates(model: nn.Module, name: str) -> None:
    """Multiply each head's gate product into its V rows and V bias, then drop the gates and their hook."""
    module = model.get_submodule(name)
    layout = _layout(model, name)
    index, _ = layout.value
    packed = layout.projections[index]
    if parametrize.is_parametrized(packed.owner, packed.weight):
        raise ConfigError(f"{_value_name(layout)} is still factorized; collapse the factors first", param="model")
    with torch.no_grad():
        product = getattr(module, GATES_ATTR).prod(dim=0).detach()
        rows, bias = layout.value_rows()
        rows.mul_(product.view(-1, 1, 1).to(rows.dtype))
        if bias is not None:
            bias.mul_(product.view(-1, 1).to(bias.dtype))
    delattr(module, GATES_ATTR)
    delattr(module, HEADS_ATTR)
    if layout.kind == "mha":
        module.__class__ = nn.MultiheadAttention
        return
    owner = packed.owner
    for key, hook in list(owner._forward_hooks.items()):
        if hook is _scale_value:
            del owner._forward_hooks[key]
            owner._forward_hooks_with_kwargs.pop(key, None)
            owner._forward_hooks_always_called.pop(key, None)
    owner.__dict__.pop(_OWNER, None)
    owner.__dict__.pop(_PART, None)


def is_head_layer(model: nn.Module, name: str) -> bool:
    """Whether the (folded) layer ``name`` is an attention whose units are heads."""
    return layout_at(model, name) is not None


def head_squares(model: nn.Module, name: str) -> torch.Tensor:
    """‖(V rows, V bias)‖² per head (float64)."""
    rows, bias = _layout(model, name).value_rows()
    squares = rows.detach().double().pow(2).sum(dim=(1, 2))
    return squares if bias is None else squares + bias.detach().double().pow(2).sum(dim=1)


def head_weight_count(model: nn.Module, name: str) -> int:
    """Weights (V rows and bias) of one head: the count its size is an RMS over."""
    rows, bias = _layout(model, name).value_rows()
    return int(rows[0].numel() + (0 if bias is None else bias[0].numel()))


def zero_head(model: nn.Module, name: str, head: int) -> None:
    """Set head ``head``'s Q, K and V rows and biases to exact zeros: it outputs zero and can be removed."""
    layout = _layout(model, name)
    with torch.no_grad():
        for packed, weight, bias in layout.tensors():
            for part in range(packed.parts):
                weight[layout.rows(head, part)] = 0.0
                if bias is not None:
                    bias[layout.rows(head, part)] = 0.0


def head_state(model: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A copy of every head's Q, K, V rows (heads, rows per head, in) and biases (heads, rows per head) or None."""
    layout = _layout(model, name)
    weights, biases = [], []
    for head in range(layout.heads):
        w, b = [], []
        for packed, weight, bias in layout.tensors():
            for part in range(packed.parts):
                rows = layout.rows(head, part)
                w.append(weight[rows])
                b.append(bias[rows] if bias is not None else torch.zeros_like(weight[rows, 0]))
        weights.append(torch.cat(w))
        biases.append(torch.cat(b))
    has_bias = any(bias is not None for _, _, bias in layout.tensors())
    return torch.stack(weights).detach().clone(), torch.stack(biases).detach().clone() if has_bias else None


def restore_heads(model: nn.Module, name: str, weights: torch.Tensor, biases: torch.Tensor | None) -> None:
    """Write back what ``head_state`` copied."""
    layout = _layout(model, name)
    with torch.no_grad():
        for head in range(layout.heads):
            start = 0
            for packed, weight, bias in layout.tensors():
                for part in range(packed.parts):
                    rows = layout.rows(head, part)
                    weight[rows] = weights[head, start : start + layout.head_dim]
                    if bias is not None and biases is not None:
                        bias[rows] = biases[head, start : start + layout.head_dim]
                    start += layout.head_dim


def _dead(layout: HeadLayout) -> torch.Tensor:
    """Bool per head: V rows all zero or output columns all zero (what the compaction removes)."""
    rows, _ = layout.value_rows()
    columns = layout.out.weight.detach().reshape(layout.out.out_features, layout.heads, layout.head_dim)
    return ~rows.detach().ne(0).any(dim=2).any(dim=1) | ~columns.ne(0).any(dim=2).any(dim=0)


def attention_macs(
    module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[int, int, int]:
    """(dense MACs, kept MACs, kept heads) of one ``nn.MultiheadAttention`` call over the whole batch: its Q, K, V
    and output projections, which it runs itself (the attention products are not counted, as elsewhere)."""
    tensors = [args[i] if i < len(args) else kwargs[n] for i, n in enumerate(("query", "key", "value"))]
    positions = [t.numel() // t.shape[-1] for t in tensors]  # tokens over the whole batch
    layout = mha_layout("", module)
    # Q, K and V rows of a head read their inputs at every position; the output columns at every query position.
    per_head = layout.head_dim * module.embed_dim * (sum(positions) + positions[0])
    kept = layout.heads if supports_heads(module) is not None else int((~_dead(layout)).sum())
    return per_head * layout.heads, per_head * kept, kept
