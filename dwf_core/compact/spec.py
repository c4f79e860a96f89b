"""The compact model on disk: its weights plus, in the safetensors header, how each module shrank.

``model.compact.safetensors`` holds the compact ``state_dict`` and a JSON ``dwf_compact`` entry:
``{module name: {"attrs": {"in_features": 394, ...}, "params": {"weight": [122, 394], ...},
"buffers": {...}, "class": "IndexedLinear"?}}`` for every module whose shapes changed. A reader builds the
original architecture (zoo name, torchvision/timm name, its own code), applies the spec with ``load_compact``
and gets the compact model; no pickle, no code in the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from dwf_core.compact.inputs import IndexedLinear, OffsetConv2d
from dwf_core.compact.mha import HeadsMultiheadAttention
from dwf_core.errors import WeightsError
from dwf_core.export import save_dense
from dwf_core.state_dict import load_tensors

SPEC_KEY = "dwf_compact"
FORMAT_KEY = "dwf_compact_format"
FORMAT = "dwf-compact/1"
# Integer attributes the shrinking changes (nn.Linear, nn.ConvNd, BatchNorm; the head counts of attention modules:
# nn.MultiheadAttention and timm's num_heads, timm's attn_dim, transformers' num_attention_heads and all_head_size);
# nothing else is ever set.
ATTRS = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "groups",
    "num_features",
    "num_heads",
    "attn_dim",
    "num_attention_heads",
    "all_head_size",
)
# Compact classes: (class, the exact class it extends, its extra buffer and that buffer's dtype, or None: no buffer).
_CLASSES: dict[str, tuple[type[nn.Module], type[nn.Module], str | None, torch.dtype]] = {
    "IndexedLinear": (IndexedLinear, nn.Linear, "input_index", torch.int64),
    "OffsetConv2d": (OffsetConv2d, nn.Conv2d, "output_offset", torch.float32),
    "HeadsMultiheadAttention": (HeadsMultiheadAttention, nn.MultiheadAttention, None, torch.float32),
}
_BAD = "invalid_compact_file"


def _shapes(tensors: Mapping[str, torch.Tensor | None]) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in tensors.items() if t is not None}


def shrink_spec(original: nn.Module, compact: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module of ``compact`` that differs from ``original``: its class, integer attributes and tensor shapes."""
    before = dict(original.named_modules())
    spec: dict[str, dict[str, Any]] = {}
    for name, module in compact.named_modules():
        old = before[name]
        new_class = type(module) is not type(old)
        old_params, old_buffers = _shapes(old._parameters), _shapes(old._buffers)
        params = {k: v for k, v in _shapes(module._parameters).items() if new_class or old_params.get(k) != v}
        buffers = {k: v for k, v in _shapes(module._buffers).items() if new_class or old_buffers.get(k) != v}
        attrs = {a: getattr(module, a) for a in ATTRS if hasattr(module, a) and getattr(module, a) != getattr(old, a)}
        entry: dict[str, Any] = {}
        if new_class:
            entry["class"] = type(module).__name__
        if attrs:
            entry["attrs"] = attrs
        if params:
            entry["params"] = params
        if buffers:
            entry["buffers"] = buffers
        if entry:
            spec[name] = entry
    return spec


def save_compact(model: nn.Module, spec: Mapping[str, Any], path: str | Path, *, metadata: Mapping[str, str]) -> int:
    """Write ``model.state_dict()`` with ``spec`` in the header; returns the bytes written."""
    header = {**metadata, SPEC_KEY: json.dumps(spec, sort_keys=True), FORMAT_KEY: FORMAT}
    return save_dense(model, path, metadata=header)


def _bad(message: str, param: str) -> WeightsError:
    return WeightsError(message, code=_BAD, param=param)


def _shape(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise _bad(f"{where}: a shape must be a list of non-negative integers, got {value!r}", where)
    return value


def _replace_class(module: nn.Module, name: str, class_name: Any) -> None:
    """Turn ``module`` into its compact class (the same layer plus at most one buffer, sized by the spec's buffers)."""
    known = _CLASSES.get(class_name) if isinstance(class_name, str) else None
    if known is None or type(module) is not known[1]:
        raise _bad(f"{name or 'the model'} ({type(module).__name__}) cannot become {class_name!r}", name)
    cls, _, buffer, dtype = known
    module.__class__ = cls
    if buffer is not None:
        module.register_buffer(buffer, torch.zeros(0, dtype=dtype))


def _apply_entry(model: nn.Module, name: str, entry: Any) -> None:
    if not isinstance(entry, dict) or not set(entry) <= {"class", "attrs", "params", "buffers"}:
        raise _bad(f"{name}: a spec entry has only class, attrs, params and buffers, got {entry!r}"[:300], name)
    try:
        module = model.get_submodule(name)
    except AttributeError as exc:
        raise _bad(f"the compact file shrinks {name!r}, which this model does not have", name) from exc
    if "class" in entry:
        _replace_class(module, name, entry["class"])
    attrs = entry.get("attrs", {})
    for attr, value in attrs.items() if isinstance(attrs, dict) else [(None, attrs)]:
        if attr not in ATTRS or not hasattr(module, attr) or not isinstance(value, int) or isinstance(value, bool):
            raise _bad(f"{name}: cannot set {attr!r} to {value!r}", name)
        setattr(module, attr, value)
    for kind in ("params", "buffers"):
        tensors = entry.get(kind, {})
        if not isinstance(tensors, dict):
            raise _bad(f"{name}: {kind} must map tensor names to shapes", name)
        for key, raw in tensors.items():
            shape = _shape(raw, f"{name}.{key}")
            old = getattr(module, key, None) if isinstance(key, str) else None
            dtype = old.dtype if isinstance(old, torch.Tensor) else torch.float32
            if kind == "params" and key in module._parameters:
                setattr(module, key, nn.Parameter(torch.empty(shape, dtype=dtype)))
            elif kind == "buffers" and key in module._buffers:
                module.register_buffer(key, torch.empty(shape, dtype=dtype))
            else:
                raise _bad(f"{name}: has no {kind[:-1]} {key!r} to resize", f"{name}.{key}")


def load_compact(model: nn.Module, path: str | Path) -> nn.Module:
    """Shrink ``model`` (the original architecture) as ``model.compact.safetensors`` says and load its weights.

    Args:
        model: a freshly built model of the architecture the job ran on; it is changed in place.
        path: a ``model.compact.safetensors`` file.

    Returns:
        ``model``, now compact, in eval mode.

    Raises:
        WeightsError: ``invalid_compact_file`` when the file is not a compact model file, its spec does not fit
            this architecture, or the weights do not match the shrunk shapes.
    """
    source = Path(path)
    try:
        with safe_open(str(source), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as exc:
        raise _bad(f"{source} is not a readable safetensors file: {exc}", str(source)) from exc
    if header.get(FORMAT_KEY) != FORMAT or SPEC_KEY not in header:
        raise _bad(f"{source.name} holds no compact-model spec (expected {FORMAT_KEY}={FORMAT})", str(source))
    try:
        spec = json.loads(header[SPEC_KEY])
    except json.JSONDecodeError as exc:
        raise _bad(f"{source.name}: the compact spec is not JSON: {exc}", SPEC_KEY) from exc
    if not isinstance(spec, dict):
        raise _bad(f"{source.name}: the compact spec must be a JSON object", SPEC_KEY)
    for name, entry in spec.items():
        _apply_entry(model, name, entry)
    try:
        load_tensors(model, state)
    except RuntimeError as exc:
        raise _bad(f"{source.name} does not fit the shrunk model: {exc}"[:2000], str(source)) from exc
    return model.eval()
