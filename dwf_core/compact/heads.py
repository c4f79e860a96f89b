"""Attention heads: where each head's weights sit, and removing the heads whose weights all died.

Three layouts are known: ``nn.MultiheadAttention`` (packed ``in_proj`` of Q, K, V rows, ``out_proj``), timm's
``Attention`` class (one ``qkv`` Linear, ``proj``) and, found by its attributes, Hugging Face BERT-style
self-attention (``query``/``key``/``value`` Linears, the sibling ``output.dense``). Attention inside a graph
converted from ONNX is none of these and stays whole. Every one keeps head h's rows at
``h·head_dim … (h+1)·head_dim`` of each of Q, K and V and reads its output through the same columns of the output
projection.

A head is dead when every weight row of its V is zero, or every output-projection column that reads it is. The
first still outputs a constant: its V bias b_v,h, since each attention row sums to 1; W_o[:, h]·b_v,h goes into the
output projection's bias. Zero Q or K rows alone do not kill a head (the scores become constant, the attention
uniform, the head outputs the mean of V). Removing a head drops its Q, K, V rows and biases and its output columns
and lowers the module's head count; head_dim, and so the score scaling, stays. Torch-Pruning's dependency graph
leaves these groups whole (the attention ops are not among the ones it handles), so this pass is separate. A module
matched by its attributes may still mix its heads, so every shrunk module is run again on the inputs it saw and put
back whole if its output moved.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from dwf_core.compact.mha import HeadsMultiheadAttention, supports_heads

Kind = Literal["mha", "timm", "hf"]
# Relative change of a shrunk attention's output on the batch it saw, as compact.model.ATOL for the whole model.
CHECK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Packed:
    """Rows of ``parts`` projections (Q, K, V…) stacked in one tensor, each ``heads · head_dim`` rows, head-major."""

    owner: nn.Module
    weight: str
    bias: str
    parts: int


@dataclass(frozen=True)
class HeadLayout:
    """One attention module: its projections, the part that is V, the output projection and the head shape."""

    name: str
    kind: Kind
    module: nn.Module
    projections: tuple[Packed, ...]
    value: tuple[int, int]  # (index into projections, part): V's rows
    out: nn.Linear
    heads: int
    head_dim: int

    def tensors(self) -> Iterator[tuple[Packed, torch.Tensor, torch.Tensor | None]]:
        """Each projection with its weight and bias (None without one), as the module holds them."""
        for packed in self.projections:
            weight = getattr(packed.owner, packed.weight)
            bias = getattr(packed.owner, packed.bias, None)
            yield packed, weight, bias if isinstance(bias, torch.Tensor) else None

    def rows(self, head: int, part: int) -> slice:
        """Head ``head``'s rows within part ``part`` of a packed projection."""
        start = (part * self.heads + head) * self.head_dim
        return slice(start, start + self.head_dim)

    def columns(self, head: int) -> slice:
        """The output projection's columns that read head ``head``."""
        return slice(head * self.head_dim, (head + 1) * self.head_dim)

    def value_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """V's weight (heads, head_dim, in) and bias (heads, head_dim) or None, as views."""
        index, part = self.value
        packed = self.projections[index]
        weight, bias = getattr(packed.owner, packed.weight), getattr(packed.owner, packed.bias, None)
        span = slice(part * self.heads * self.head_dim, (part + 1) * self.heads * self.head_dim)
        rows = weight[span].reshape(self.heads, self.head_dim, -1)
        return rows, bias[span].reshape(self.heads, self.head_dim) if isinstance(bias, torch.Tensor) else None


def mha_layout(name: str, module: nn.MultiheadAttention) -> HeadLayout:
    """The layout of an ``nn.MultiheadAttention`` with packed Q, K, V weights (``supports_heads`` says whether)."""
    packed = Packed(module, "in_proj_weight", "in_proj_bias", 3)
    return HeadLayout(name, "mha", module, (packed,), (0, 2), module.out_proj, module.num_heads, module.head_dim)


def _is_timm_attention(module: nn.Module) -> bool:
    try:
        from timm.layers.attention import Attention
    except ImportError:
        return False
    return type(module) is Attention


def _is_hf_attention(module: nn.Module) -> bool:
    """BERT-style self-attention: query/key/value Linears and the head counts transformers keeps on the module."""
    return (
        all(isinstance(getattr(module, n, None), nn.Linear) for n in ("query", "key", "value"))
        and all(isinstance(getattr(module, n, None), int) for n in ("num_attention_heads", "attention_head_size"))
        and isinstance(getattr(module, "all_head_size", None), int)
    )


def _layout(model: nn.Module, name: str, module: nn.Module) -> HeadLayout | str | None:
    """The head layout of ``module``, why it cannot be used (a reason), or None when it is no attention module."""
    layout = _known_layout(model, name, module)
    if isinstance(layout, HeadLayout) and layout.heads * layout.head_dim != layout.out.in_features:
        return "the output projection does not read heads · head_dim columns"
    return layout


def _known_layout(model: nn.Module, name: str, module: nn.Module) -> HeadLayout | str | None:
    if isinstance(module, nn.MultiheadAttention):
        reason = supports_heads(module)
        if reason is not None:
            return reason
        return mha_layout(name, module)
    if _is_timm_attention(module):
        if not isinstance(module.norm, nn.Identity) or module.gate is not None:
            return "timm attention with a scale norm or an output gate"
        packed = Packed(module.qkv, "weight", "bias", 3)
        heads, head_dim = int(module.num_heads), int(module.head_dim)
        return HeadLayout(name, "timm", module, (packed,), (0, 2), module.proj, heads, head_dim)
    if _is_hf_attention(module):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        out = getattr(getattr(parent, "output", None), "dense", None)
        if attr != "self" or not isinstance(out, nn.Linear):
            return "no output.dense beside the attention"
        projections = tuple(Packed(getattr(module, n), "weight", "bias", 1) for n in ("query", "key", "value"))
        counts: Any = module  # transformers' attributes, untyped
        heads, head_dim = int(counts.num_attention_heads), int(counts.attention_head_size)
        return HeadLayout(name, "hf", module, projections, (2, 0), out, heads, head_dim)
    return None


def layout_at(model: nn.Module, name: str) -> HeadLayout | None:
    """The head layout of ``model``'s module ``name``, or None when it has none that can be used."""
    layout = _layout(model, name, model.get_submodule(name))
    return layout if isinstance(layout, HeadLayout) else None


def find_attention(model: nn.Module) -> tuple[list[HeadLayout], dict[str, str]]:
    """Every attention module of ``model`` with a known head layout, and those that have none (name → why)."""
    found: list[HeadLayout] = []
    refused: dict[str, str] = {}
    for name, module in model.named_modules():
        layout = _layout(model, name, module)
        if isinstance(layout, str):
            refused[name] = layout
        elif layout is not None:
            found.append(layout)
    return found, refused


@dataclass
class HeadReport:
    """Heads per attention module before and after, how many constants were folded, modules left whole."""

    heads: dict[str, tuple[int, int]] = field(default_factory=dict)
    folded: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "attention_heads": {name: {"before": a, "kept": b} for name, (a, b) in self.heads.items()},
            "folded_heads": self.folded,
            "attention_left_whole": dict(self.skipped),
        }


def _dead_heads(layout: HeadLayout) -> list[tuple[int, torch.Tensor | None]]:
    """(head, what its constant adds to the output bias, or None) for each dead head."""
    with torch.no_grad():
        rows, bias = layout.value_rows()
        out = layout.out.weight.detach()
        dead: list[tuple[int, torch.Tensor | None]] = []
        for head in range(layout.heads):
            columns = out[:, layout.columns(head)]
            if not bool(columns.ne(0).any()):
                dead.append((head, None))  # nobody reads it
            elif not bool(rows[head].ne(0).any()):
                constant = None if bias is None else bias[head].detach()
                folds = constant is not None and bool(constant.ne(0).any())
                dead.append((head, columns @ constant if folds and constant is not None else None))
    return dead


def _set(owner: nn.Module, name: str, value: torch.Tensor) -> None:
    setattr(owner, name, nn.Parameter(value.detach().clone(), requires_grad=False))


def _indices(spans: list[slice], device: torch.device) -> torch.Tensor:
    return torch.cat([torch.arange(s.start, s.stop, device=device) for s in spans])


def keep_heads(layout: HeadLayout, keep: list[int]) -> None:
    """Shrink ``layout``'s module to the heads ``keep`` (sorted): rows, biases, output columns and head counts."""
    with torch.no_grad():
        for packed, weight, bias in layout.tensors():
            rows = _indices([layout.rows(h, part) for part in range(packed.parts) for h in keep], weight.device)
            _set(packed.owner, packed.weight, weight.index_select(0, rows))
            if bias is not None:
                _set(packed.owner, packed.bias, bias.index_select(0, rows))
            if isinstance(packed.owner, nn.Linear):
                packed.owner.out_features = len(rows)
        out = layout.out
        columns = _indices([layout.columns(h) for h in keep], out.weight.device)
        _set(out, "weight", out.weight.index_select(1, columns))
        out.in_features = len(columns)
    module: Any = layout.module  # attributes of three unrelated classes
    count = len(keep)
    if layout.kind == "mha":
        module.__class__ = HeadsMultiheadAttention
        module.num_heads = count
    elif layout.kind == "timm":
        module.num_heads = count
        module.attn_dim = count * layout.head_dim
    else:
        module.num_attention_heads = count
        module.all_head_size = count * layout.head_dim


def _add_to_bias(linear: nn.Linear, delta: torch.Tensor) -> None:
    base = linear.bias.detach() if isinstance(linear.bias, torch.Tensor) else torch.zeros_like(delta)
    _set(linear, "bias", base + delta.to(base.dtype))


def _scope(layout: HeadLayout) -> str:
    """The module whose output shows every effect of removing heads: the attention itself (its output projection is
    inside), or for transformers its parent, which holds the attention and ``output.dense``."""
    return layout.name if layout.kind != "hf" else layout.name.rpartition(".")[0]


Call = tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]


def _first_calls(model: nn.Module, names: list[str], batch: torch.Tensor) -> dict[str, Call]:
    """Per named module: the arguments and (first tensor) output of its first call when ``model`` runs ``batch``."""
    calls: dict[str, Call] = {}
    handles = []
    for name in names:

        def record(_m: nn.Module, args: Any, kwargs: Any, output: Any, name: str = name) -> None:
            first = output[0] if isinstance(output, tuple) else output
            if name not in calls and isinstance(first, torch.Tensor):
                calls[name] = (tuple(args), dict(kwargs), first.detach())

        handles.append(model.get_submodule(name).register_forward_hook(record, with_kwargs=True))
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _changed_by(module: nn.Module, call: Call) -> float:
    """How far ``module``'s output on the recorded call now is from the recorded one, relative to its size."""
    args, kwargs, before = call
    with torch.no_grad():
        output = module(*args, **kwargs)
    after = output[0] if isinstance(output, tuple) else output
    if not isinstance(after, torch.Tensor) or after.shape != before.shape:
        return math.inf
    return float((after - before).abs().max()) / max(1.0, float(before.abs().max())) if before.numel() else 0.0


# What keep_heads and the bias fold change besides parameters (which they replace, never change in place).
_CHANGED_ATTRS = ("in_features", "out_features", "num_heads", "attn_dim", "num_attention_heads", "all_head_size")
Snapshot = list[tuple[nn.Module, type[nn.Module], dict[str, Any], dict[str, Any]]]


def _snapshot(layout: HeadLayout) -> Snapshot:
    """Class, parameter objects and head/feature counts of every module removing heads touches."""
    modules = {id(m): m for m in (layout.module, layout.out, *(p.owner for p in layout.projections))}
    return [
        (m, type(m), dict(m._parameters), {a: getattr(m, a) for a in _CHANGED_ATTRS if hasattr(m, a)})
        for m in modules.values()
    ]


def _restore(snapshot: Snapshot) -> None:
    """Put back what ``_snapshot`` saw."""
    for module, cls, params, attrs in snapshot:
        module.__class__ = cls
        module._parameters.update(params)
        for attr, value in attrs.items():
            setattr(module, attr, value)


def remove_dead_heads(model: nn.Module, batch: torch.Tensor) -> HeadReport:
    """Remove the dead heads of every known attention module of ``model`` (a plain model in eval mode), in place.

    Each module keeps at least one head (empty tensors break exporters and runtimes). Modules whose weights are
    parametrized (factorized or gated) are left whole: collapse them first. A module is matched by its structure,
    so each shrunk one is run again on the inputs it got from ``batch``: one whose output moved by more than
    ``CHECK_TOLERANCE`` (relative) is put back whole, with the reason in the report.
    """
    report = HeadReport()
    layouts, report.skipped = find_attention(model)
    plans: list[tuple[HeadLayout, list[tuple[int, torch.Tensor | None]]]] = []
    for layout in layouts:
        tensors = [layout.module, layout.out, *(p.owner for p in layout.projections)]
        if any(parametrize.is_parametrized(m) for m in tensors):
            report.skipped[layout.name] = "parametrized weights (collapse the model first)"
            continue
        dead = _dead_heads(layout)
        plans.append((layout, dead[:-1] if len(dead) == layout.heads else dead))
    calls = _first_calls(model, [_scope(layout) for layout, dead in plans if dead], batch)
    for layout, dead in plans:
        kept = layout.heads - len(dead)
        if dead:
            scope = _scope(layout)
            whole = _snapshot(layout)
            for _, delta in dead:
                if delta is not None:
                    _add_to_bias(layout.out, delta)
            gone = {head for head, _ in dead}
            keep_heads(layout, [h for h in range(layout.heads) if h not in gone])
            change = _changed_by(model.get_submodule(scope), calls[scope]) if scope in calls else 0.0
            if not change <= CHECK_TOLERANCE:
                _restore(whole)
                report.skipped[layout.name] = f"removing {len(dead)} dead heads changed its output by {change:.3g}"
                kept = layout.heads
            else:
                report.folded += sum(1 for _, delta in dead if delta is not None)
        report.heads[layout.name] = (layout.heads, kept)
    return report
