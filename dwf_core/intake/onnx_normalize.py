"""Semantics-preserving ONNX graph rewrites that let onnx2torch convert what today's exporters produce."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.inliner
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper

from dwf_core.intake.onnx_batch import free_batch_in_reshapes


@dataclass
class NormalizeReport:
    """What the normalization changed, for logs and tests."""

    inlined_functions: int = 0
    constants_to_initializers: int = 0
    identities_folded: int = 0
    allowzero_dropped: int = 0
    batch_reshapes_freed: int = 0


def _subgraphs(node: NodeProto) -> Iterator[GraphProto]:
    """Yield the graphs held by a node's attributes (If/Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _rename_inputs(graph: GraphProto, mapping: dict[str, str]) -> None:
    """Point every node input (subgraphs included, they may capture outer names) through ``mapping``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for sub in _subgraphs(node):
            _rename_inputs(sub, mapping)


def _constant_tensor(node: NodeProto) -> TensorProto | None:
    """The value of a Constant node as a tensor, or None for sparse/string forms we leave alone."""
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value" and attr.type == AttributeProto.TENSOR:
        tensor = TensorProto()
        tensor.CopyFrom(attr.t)
        return tensor
    # onnx.helper decodes the scalar/list attribute forms into the tensor Constant would produce.
    dtype_of = {
        "value_float": np.float32,
        "value_floats": np.float32,
        "value_int": np.int64,
        "value_ints": np.int64,
    }
    if attr.name in dtype_of:
        array = np.asarray(onnx.helper.get_attribute_value(attr), dtype=dtype_of[attr.name])
        return numpy_helper.from_array(array)
    return None


def constants_to_initializers(model: ModelProto, report: NormalizeReport) -> None:
    """Turn top-level Constant nodes into initializers.

    onnx2torch builds nn.Conv2d/nn.Linear (parametrizable modules) only when weights are initializers;
    some exporters and optimizers emit weights as Constant nodes instead.
    """
    if model.ir_version < 4:
        # Before IR 4 every initializer must also be a graph input; not worth supporting here.
        return
    graph = model.graph
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        tensor = _constant_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        # A graph output must stay produced by a node for onnx2torch's output wiring.
        if tensor is None or node.output[0] in outputs:
            keep.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        report.constants_to_initializers += 1
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def fold_identity_initializers(model: ModelProto, report: NormalizeReport) -> None:
    """Replace ``Identity(initializer)`` outputs by the initializer itself.

    The TorchScript-based exporter de-duplicates equal initializers (e.g. folded BatchNorm biases) by
    routing copies through Identity nodes; onnx2torch's Conv/Gemm converters then look the bias up
    among initializers and fail with KeyError. Consumers read the shared initializer directly instead;
    onnx2torch copies it into each module, so the modules stay independent.
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    mapping: dict[str, str] = {}
    keep = []
    for node in graph.node:  # topological order, so chains of Identity resolve in one sweep
        source = mapping.get(node.input[0], node.input[0]) if node.input else ""
        is_identity = node.op_type == "Identity" and node.domain in ("", "ai.onnx") and len(node.output) == 1
        if is_identity and source in initializers and node.output[0] not in outputs:
            mapping[node.output[0]] = source
            report.identities_folded += 1
            continue
        keep.append(node)
    if mapping:
        del graph.node[:]
        graph.node.extend(keep)
        _rename_inputs(graph, mapping)


def _constant_tensors(graph: GraphProto) -> dict[str, TensorProto]:
    """Initializers and Constant-node outputs of ``graph``, by name."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            tensor = _constant_tensor(node)
            if tensor is not None:
                found[node.output[0]] = tensor
    return found


def drop_redundant_allowzero(model: ModelProto, report: NormalizeReport) -> None:
    """Remove ``allowzero=1`` from Reshape nodes whose constant target shape contains no zero.

    allowzero only changes how a 0 in the target shape is read; the dynamo exporter sets it on every
    Reshape and onnx2torch refuses it, so it is dropped exactly where it cannot matter.
    """
    graph = model.graph
    constants: dict[str, TensorProto] | None = None
    for node in graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        attrs = [a for a in node.attribute if a.name == "allowzero"]
        if not attrs or attrs[0].i == 0:
            continue
        if constants is None:
            constants = _constant_tensors(graph)
        shape = constants.get(node.input[1])
        if shape is not None and 0 not in numpy_helper.to_array(shape).reshape(-1).tolist():
            node.attribute.remove(attrs[0])
            report.allowzero_dropped += 1


def _static_batch(graph: GraphProto) -> int | None:
    """The fixed leading dim of the graph's single data input, if it has one (exports without dynamic axes)."""
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or not inputs[0].type.HasField("tensor_type"):
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value <= 0:
        return None
    return int(dims[0].dim_value)


def free_static_batch(model: ModelProto, report: NormalizeReport) -> None:
    """Make a graph exported with a fixed batch size accept any batch size.

    Exporters without dynamic axes (the default) bake the example's batch size into the input shape and
    into Reshape targets, such as the dynamo exporter's ``Reshape(x, [1, 512])`` before the classifier or its
    attention reshapes (``[seq, B·heads, head_dim]``). Training needs other batch sizes, so the target dim
    that holds the batch becomes -1 (found by following the batch through the graph, onnx_batch.py; it resolves
    to the same value at the exported batch size, so the graph's result there is unchanged) and the
    input/output batch dims become symbolic.
    """
    graph = model.graph
    batch = _static_batch(graph)
    if batch is None:
        return
    freed = free_batch_in_reshapes(model, batch)
    if freed is not None:
        report.batch_reshapes_freed += freed
    else:
        _free_leading_batch(graph, batch, report)
    initializer_names = {t.name for t in graph.initializer}
    for value in [*graph.input, *graph.output]:
        if value.name in initializer_names or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].dim_param = "batch"


def _free_leading_batch(graph: GraphProto, batch: int, report: NormalizeReport) -> None:
    """The fallback when shape inference cannot follow the graph: only a leading target dim equal to the batch."""
    initializers = {t.name: t for t in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for node in graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        shape_init = initializers.get(node.input[1])
        if shape_init is None:
            continue
        target = numpy_helper.to_array(shape_init).reshape(-1)
        if target.size < 2 or int(target[0]) != batch or -1 in target.tolist() or 0 in target.tolist():
            continue
        freed = target.copy()
        freed[0] = -1
        if users.get(node.input[1], 0) == 1:
            shape_init.CopyFrom(numpy_helper.from_array(freed, shape_init.name))
        else:
            # Shared target: give this Reshape its own copy instead of changing the other users.
            name = f"{node.input[1]}__dwf_free_batch_{report.batch_reshapes_freed}"
            graph.initializer.append(numpy_helper.from_array(freed, name))
            node.input[1] = name
        report.batch_reshapes_freed += 1


def inline_local_functions(model: ModelProto, report: NormalizeReport) -> ModelProto:
    """Inline model-local functions, which onnx2torch cannot convert as opaque ops."""
    if not model.functions:
        return model
    report.inlined_functions = len(model.functions)
    inlined: ModelProto = onnx.inliner.inline_local_functions(model)
    return inlined


def normalize_for_onnx2torch(model: ModelProto) -> tuple[ModelProto, NormalizeReport]:
    """Apply every rewrite, in dependency order, to a copy-safe model.

    Args:
        model: A checked ModelProto with all tensor data inline; it is modified in place.

    Returns:
        The (possibly new) model and a report of what changed.
    """
    report = NormalizeReport()
    model = inline_local_functions(model, report)
    constants_to_initializers(model, report)
    fold_identity_initializers(model, report)
    drop_redundant_allowzero(model, report)
    free_static_batch(model, report)
    return model, report
