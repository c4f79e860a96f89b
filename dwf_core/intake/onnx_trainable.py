"""Turn the weights that onnx2torch keeps as frozen buffers into trainable parameters.

onnx2torch builds real ``nn.Linear``/``nn.ConvNd``/norm modules only for some node forms (a Gemm with a constant
weight, a Conv, a LayerNormalization with constant scale); every other initializer becomes a buffer of the
``initializers`` submodule: the MatMul weights of attention and feed-forward blocks, embedding tables read by
Gather, biases added after a MatMul, positional embeddings, the scale and shift of decomposed norms. Left as
buffers they never train. This module reads how each initializer is used in the converted graph and makes it a
parameter where the use is a learnable one:

* ``weight``: an operand of MatMul, Gemm or Einsum with two or more dims. Factorized by default like a Linear
  weight; its fan-in (which depends on the operand's side and transposition) is recorded for the init.
* ``embedding``: the data of a Gather; a 2-D table is factorized by default, like an nn.Embedding.
* ``affine``: a non-scalar operand of Add, Sub or Mul (biases, positional embeddings, scales). ``norm``: the scale
  and bias of a functional norm (BatchNorm running statistics stay buffers). These train but are not factorized by
  default, like biases and norm parameters.

Scalars, non-finite tensors (masks) and tensors with any other use (shape arithmetic, Div constants) stay
frozen. An initializer the exporter shared among several uses (equal constants are de-duplicated) gets one
parameter per use, ``name__use1`` and so on beside ``name``, so they train apart as in the exported model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from onnx2torch.node_converters.batch_norm import OnnxBatchNorm
from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
from onnx2torch.node_converters.einsum import OnnxEinsum
from onnx2torch.node_converters.gather import OnnxGather
from onnx2torch.node_converters.gemm import OnnxGemm
from onnx2torch.node_converters.instance_norm import OnnxInstanceNorm
from onnx2torch.node_converters.layer_norm import OnnxLayerNorm
from onnx2torch.node_converters.matmul import OnnxMatMul
from torch import fx, nn

from dwf_core.factorize import WEIGHT_FAN_IN_ATTR

_CONTAINER = "initializers"
_AFFINE_OPS = (torch.add, torch.sub, torch.mul)


@dataclass
class PromotionReport:
    """What became trainable: initializer name → role, and the fan-in of each ``weight``."""

    roles: dict[str, str] = field(default_factory=dict)
    fan_in: dict[str, int] = field(default_factory=dict)


def _einsum_fan_in(equation: str, operand: int, shape: torch.Size) -> int | None:
    """Product of the operand's dims that the equation sums over (in the operand, not in the output)."""
    text = equation.replace(" ", "")
    if "..." in text or "->" not in text:
        return None
    inputs, output = text.split("->")
    terms = inputs.split(",")
    if operand >= len(terms) or len(terms[operand]) != len(shape):
        return None
    summed = [size for letter, size in zip(terms[operand], shape, strict=True) if letter not in output]
    return math.prod(summed) if summed else None


def _use(module: nn.Module, index: int, tensor: torch.Tensor) -> tuple[str, int | None] | None:
    """The role of ``tensor`` as input ``index`` of ``module`` (and its fan-in for a weight), or None."""
    if isinstance(module, OnnxMatMul) and tensor.dim() >= 2 and index in (0, 1):
        # x @ W sums over W's second-to-last dim; W @ x over its last.
        return "weight", int(tensor.shape[-2] if index == 1 else tensor.shape[-1])
    if isinstance(module, OnnxGemm) and tensor.dim() == 2 and index in (0, 1):
        transposed = module.trans_b if index == 1 else module.trans_a
        summed_dim = (1 if transposed else 0) if index == 1 else (0 if transposed else 1)
        return "weight", int(tensor.shape[summed_dim])
    if isinstance(module, OnnxGemm) and index == 2:
        return "affine", None
    if isinstance(module, OnnxEinsum) and tensor.dim() >= 2:
        return "weight", _einsum_fan_in(module.equation, index, tensor.shape)
    if isinstance(module, OnnxGather) and index == 0:
        return "embedding", None
    if isinstance(module, OnnxBinaryMathOperation) and module.math_op_function in _AFFINE_OPS:
        return "affine", None
    if isinstance(module, OnnxBatchNorm) and index in (1, 2):
        return "norm", None
    if isinstance(module, OnnxLayerNorm | OnnxInstanceNorm) and index in (1, 2):
        return "norm", None
    return None


def _roles(graph_module: fx.GraphModule, node: fx.Node, tensor: torch.Tensor) -> list[tuple[str, int | None]] | None:
    """Every use of the get_attr ``node``, or None when one of them is not a learnable use."""
    uses: list[tuple[str, int | None]] = []
    for user in node.users:
        if user.op != "call_module" or node in user.kwargs.values():
            return None
        module = graph_module.get_submodule(str(user.target))
        for index, arg in enumerate(user.args):
            if arg is node:
                use = _use(module, index, tensor)
                if use is None:
                    return None
                uses.append(use)
    return uses or None


def _untie(
    graph_module: fx.GraphModule, container: nn.Module, name: str, nodes: list[fx.Node], report: PromotionReport
) -> None:
    """Give every use of the parameter ``name`` after the first its own copy (``name__use1``, …).

    Exporters de-duplicate equal constants: the dynamo exporter shares one zero vector among every freshly
    initialized bias of a width, and one ones vector among norm scales. Trained as one parameter they would stay
    tied; the model the user exported had separate ones.
    """
    uses = [(node, user) for node in nodes for user in list(node.users)]
    source = getattr(container, name)
    for count, (node, user) in enumerate(uses[1:], start=1):
        copy = f"{name}__use{count}"
        container.register_parameter(copy, nn.Parameter(source.detach().clone()))
        with graph_module.graph.inserting_before(user):
            reader = graph_module.graph.get_attr(f"{_CONTAINER}.{copy}")
        user.replace_input_with(node, reader)
        report.roles[copy] = report.roles[name]
        if name in report.fan_in:
            report.fan_in[copy] = report.fan_in[name]


def promote_initializers(graph_module: fx.GraphModule) -> PromotionReport:
    """Make every learnable initializer buffer of an onnx2torch module a parameter (in place).

    Returns what was promoted; the fan-ins of the weight matrices are also stored on the ``initializers``
    submodule under ``WEIGHT_FAN_IN_ATTR``, where the default factorization finds them.
    """
    report = PromotionReport()
    if not hasattr(graph_module, _CONTAINER):
        return report
    container = graph_module.get_submodule(_CONTAINER)
    readers: dict[str, list[fx.Node]] = {}
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and str(node.target).startswith(f"{_CONTAINER}."):
            readers.setdefault(str(node.target).split(".", 1)[1], []).append(node)
    for name, nodes in readers.items():
        tensor = container._buffers.get(name)
        if tensor is None or not tensor.is_floating_point() or tensor.numel() <= 1:
            continue
        if not bool(torch.isfinite(tensor).all()):
            continue  # a mask, not a weight
        uses: list[tuple[str, int | None]] = []
        for node in nodes:
            found = _roles(graph_module, node, tensor)
            if found is None:
                break
            uses += found
        else:
            if not uses:
                continue
            weights = [fan_in for role, fan_in in uses if role == "weight"]
            report.roles[name] = "weight" if weights else uses[0][0]
            known = [f for f in weights if f]
            if known:
                report.fan_in[name] = known[0]
    for name in list(report.roles):
        tensor = container._buffers.pop(name)
        assert tensor is not None
        container.register_parameter(name, nn.Parameter(tensor.detach().clone()))
        _untie(graph_module, container, name, readers[name], report)
    graph_module.recompile()
    # Factorized by default: the weight matrices and the embedding tables (2-D Gather data, fan-in read from the shape).
    listed = {
        name: report.fan_in.get(name)
        for name, role in report.roles.items()
        if role == "weight" or (role == "embedding" and container.get_parameter(name).dim() == 2)
    }
    setattr(container, WEIGHT_FAN_IN_ATTR, listed)
    return report
