"""Extra onnx2torch converters for operator versions that current exporters emit and onnx2torch lacks."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import torch
from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OperationConverterResult,
    get_const_value,
    onnx_mapping_from_node,
)
from torch import nn

Converter = Callable[[OnnxNode, OnnxGraph], OperationConverterResult]

# (op, new since-version) -> registered older version whose converter is reused verbatim. Each pair
# differs only in the tensor types it admits (bfloat16 in opset 22; float8/int4/float4 in 19/21/23/24)
# or in enum values the reused converter already refuses (ScatterND reductions, Cast's float8 flags):
# inputs, outputs and attributes are identical (checked against onnx.defs in the tests).
TYPE_ONLY_ALIASES: dict[tuple[str, int], int] = {
    **{(op, 22): v for op, v in (("Acos", 7), ("Asin", 7), ("Atan", 7), ("Cos", 7), ("Sin", 7), ("Tan", 7))},
    **{(op, 22): v for op, v in (("Conv", 11), ("ConvTranspose", 11), ("Dropout", 13), ("Elu", 6))},
    **{(op, 22): v for op, v in (("EyeLike", 9), ("GlobalAveragePool", 1), ("HardSigmoid", 6))},
    **{(op, 22): v for op, v in (("HardSwish", 14), ("InstanceNormalization", 6), ("MaxPool", 12))},
    **{(op, 22): v for op, v in (("RoiAlign", 16), ("Round", 11), ("Selu", 6), ("Softplus", 1))},
    ("Softsign", 22): 1,
    **{("Cast", v): 13 for v in (19, 21, 23, 24)},
    **{("Constant", v): 13 for v in (19, 21, 23, 24)},
    **{("ConstantOfShape", v): 9 for v in (20, 21, 23, 24)},
    **{("Identity", v): 16 for v in (19, 21, 23, 24)},
    **{("Reshape", v): 14 for v in (19, 21, 23, 24)},
    **{("Shape", v): 15 for v in (19, 21, 23, 24)},
    **{("Flatten", v): 13 for v in (21, 23, 24)},
    **{("Transpose", v): 13 for v in (21, 23, 24)},
    **{("Unsqueeze", v): 13 for v in (21, 23, 24)},
    **{("Squeeze", v): 21 for v in (23, 24)},
    ("Equal", 19): 13,
    ("GreaterOrEqual", 16): 12,
    ("LessOrEqual", 16): 12,
    ("IsInf", 20): 10,
    ("IsNaN", 20): 13,
    ("ScatterND", 18): 16,
    ("TopK", 24): 11,
}

REDUCE_OPS = (
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
)
# Opset 18 moved `axes` from an attribute to an input; ReduceMax/Min 20 only added bool inputs.
REDUCE_VERSIONS: dict[str, tuple[int, ...]] = {
    op: (18, 20) if op in ("ReduceMax", "ReduceMin") else (18,) for op in REDUCE_OPS
}

_registered = False
_register_lock = threading.Lock()


def _input(node: OnnxNode, index: int) -> str | None:
    """Name of the node's ``index``-th input, or None when it is absent or skipped ("")."""
    values = node.input_values
    return values[index] if index < len(values) and values[index] else None


def _const_ints(node: OnnxNode, graph: OnnxGraph, index: int, what: str) -> list[int] | None:
    """Read an optional constant int-list input, refusing one computed at run time."""
    name = _input(node, index)
    if name is None:
        return None
    try:
        value = get_const_value(name, graph)
    except KeyError as exc:
        raise NotImplementedError(
            f"{node.operation_type} with a non-constant {what} input ({name!r}) is not supported"
        ) from exc
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value)]


class ReduceConstAxes(nn.Module):
    """ONNX Reduce* (opset 18+) with constant axes, written with plain torch ops so it re-exports cleanly."""

    def __init__(self, op_type: str, axes: list[int] | None, keepdims: bool, noop_with_empty_axes: bool) -> None:
        """Store the reduction kind and its static axes."""
        super().__init__()
        self.op_type = op_type
        self.axes = tuple(axes) if axes else ()
        self.keepdims = keepdims
        self.noop_with_empty_axes = noop_with_empty_axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reduce ``x`` over the stored axes (all axes when none are given, unless it is a no-op)."""
        if not self.axes and self.noop_with_empty_axes:
            # Reducing over no axes still applies the element-wise part (onnx reference and onnxruntime).
            if self.op_type in ("ReduceL1", "ReduceL2"):
                return x.abs()
            if self.op_type == "ReduceSumSquare":
                return x.square()
            if self.op_type == "ReduceLogSum":
                return x.log()
            return x
        dims = sorted({a % x.dim() for a in self.axes}) if self.axes else list(range(x.dim()))
        keep = self.keepdims
        op = self.op_type
        if op == "ReduceMean":
            return x.mean(dim=dims, keepdim=keep)
        if op == "ReduceMax":
            return torch.amax(x, dim=dims, keepdim=keep)
        if op == "ReduceMin":
            return torch.amin(x, dim=dims, keepdim=keep)
        if op == "ReduceL1":
            return x.abs().sum(dim=dims, keepdim=keep)
        if op == "ReduceL2":
            return x.square().sum(dim=dims, keepdim=keep).sqrt()
        if op == "ReduceSumSquare":
            return x.square().sum(dim=dims, keepdim=keep)
        if op == "ReduceLogSum":
            return x.sum(dim=dims, keepdim=keep).log()
        if op == "ReduceLogSumExp":
            return torch.logsumexp(x, dim=dims, keepdim=keep)
        # ReduceProd: torch.prod takes one dim at a time; go from the last so indices stay valid.
        out = x
        for d in reversed(dims):
            out = out.prod(dim=d, keepdim=keep)
        return out


def _reduce_converter(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Convert an opset-18-style Reduce* whose axes input is a constant."""
    axes = _const_ints(node, graph, 1, "axes")
    data = _input(node, 0)
    if data is None:
        raise NotImplementedError(f"{node.operation_type} without a data input")
    module = ReduceConstAxes(
        node.operation_type,
        axes,
        keepdims=bool(node.attributes.get("keepdims", 1)),
        noop_with_empty_axes=bool(node.attributes.get("noop_with_empty_axes", 0)),
    )
    return OperationConverterResult(
        torch_module=module, onnx_mapping=OnnxMapping(inputs=(data,), outputs=node.output_values)
    )


class Split18(nn.Module):
    """ONNX Split-18 with ``num_outputs``: chunks of ceil(len / n), the last one smaller."""

    def __init__(self, axis: int, num_outputs: int) -> None:
        """Store the split axis and the number of outputs."""
        super().__init__()
        self.axis = axis
        self.num_outputs = num_outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split ``x`` into ``num_outputs`` chunks along ``axis``."""
        return torch.split(x, math.ceil(x.shape[self.axis] / self.num_outputs), dim=self.axis)


def _delegate(op: str, version: int) -> Converter:
    """Return onnx2torch's converter registered for (op, version)."""
    converter: Converter = get_converter(operation_type=op, version=version)
    return converter


def _alias(op: str, old: int) -> Converter:
    """Converter reusing onnx2torch's converter for an older, semantically identical version."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        """Delegate to the older version's converter."""
        return _delegate(op, old)(node, graph)

    return convert


def _average_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """AveragePool-19/22: the v11 converter is exact when no dilation is used."""
    if any(d != 1 for d in node.attributes.get("dilations", [])):
        raise NotImplementedError("AveragePool with dilations is not supported")
    return _delegate("AveragePool", 11)(node, graph)


def _pad(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Pad-18+: the v13 converter is exact when the optional ``axes`` input is absent."""
    if _input(node, 3) is not None:
        raise NotImplementedError("Pad with an axes input is not supported")
    return _delegate("Pad", 13)(node, graph)


def _resize(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Resize-18/19: the v13 converter is exact without antialias, axes or aspect-ratio policies."""
    attrs = node.attributes
    if attrs.get("antialias", 0) or attrs.get("axes") or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise NotImplementedError("Resize with antialias, axes or keep_aspect_ratio_policy is not supported")
    if attrs.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        raise NotImplementedError("Resize with coordinate_transformation_mode=half_pixel_symmetric is not supported")
    return _delegate("Resize", 13)(node, graph)


def _split(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Split-18: with a ``split`` input it is Split-13; with ``num_outputs`` chunk sizes round up."""
    if _input(node, 1) is not None or "num_outputs" not in node.attributes:
        return _delegate("Split", 13)(node, graph)
    data = _input(node, 0)
    if data is None:
        raise NotImplementedError("Split without a data input")
    module = Split18(axis=int(node.attributes.get("axis", 0)), num_outputs=int(node.attributes["num_outputs"]))
    return OperationConverterResult(
        torch_module=module, onnx_mapping=OnnxMapping(inputs=(data,), outputs=node.output_values)
    )


def _gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Gelu-20 (emitted by the dynamo exporter at opset 20+) is torch's GELU with the same approximation."""
    del graph
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu with approximate={approximate!r} is not supported")
    return OperationConverterResult(
        torch_module=nn.GELU(approximate=approximate), onnx_mapping=onnx_mapping_from_node(node)
    )


def _mish(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Mish-18 is torch's Mish."""
    del graph
    return OperationConverterResult(torch_module=nn.Mish(), onnx_mapping=onnx_mapping_from_node(node))


def _is_registered(op: str, version: int) -> bool:
    """True when onnx2torch (perhaps a newer release) already converts exactly this version."""
    try:
        get_converter(operation_type=op, version=version)
    except NotImplementedError:
        return False
    return True


def extra_converters() -> dict[tuple[str, int], Converter]:
    """Every (op, version) converter this module adds, keyed by onnx since-version."""
    table: dict[tuple[str, int], Converter] = {key: _alias(key[0], old) for key, old in TYPE_ONLY_ALIASES.items()}
    for op, versions in REDUCE_VERSIONS.items():
        table.update({(op, v): _reduce_converter for v in versions})
    table.update({("AveragePool", v): _average_pool for v in (19, 22)})
    table.update({("Pad", v): _pad for v in (18, 19, 21, 23, 24)})
    table.update({("Resize", v): _resize for v in (18, 19)})
    table[("Split", 18)] = _split
    table.update({("Gelu", 20): _gelu, ("Mish", 18): _mish, ("Mish", 22): _mish})
    return table


def register_extra_converters() -> None:
    """Register the extra converters with onnx2torch once; versions it already handles are left alone."""
    global _registered
    # The service may convert from several threads; onnx2torch refuses a second registration.
    with _register_lock:
        if _registered:
            return
        for (op, version), converter in extra_converters().items():
            if not _is_registered(op, version):
                register: Any = add_converter(operation_type=op, version=version)
                register(converter)
        _registered = True
