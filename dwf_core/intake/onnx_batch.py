"""Find where an exported graph baked its example's batch size into Reshape targets, and free those dims.

Exporters without dynamic axes write the example's batch size B into every constant Reshape target, and
not only as a leading dim: the dynamo exporter's attention reshapes put it in the middle (``[seq, B, 3, d]``)
or merge it with another dim (``[seq, B·heads, head_dim]``, ``[seq·B, d]``). The numbers alone cannot say
which dim of ``[16, 8, 8]`` holds the batch, so this module follows the batch through the graph:

* ONNX shape inference at B and at another batch size P tells, for each Reshape input, which dim carries the
  batch (the one whose size changes) and its size ``a·B·b``;
* ``b``, the size of what lies inside the batch within that dim (merged with it by an earlier Reshape), is
  carried from tensor to tensor; ``a`` follows from the size;
* in row-major order the batch then covers the element offsets ``pre·a`` to ``pre·a·B`` of the input
  (``pre``: the product of the dims before it); the target dim that covers that range holds the batch, and
  becomes -1. At batch B the result is unchanged, so the onnxruntime check still compares like with like.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper, shape_inference

# Float initializers larger than this are replaced by typed inputs in the copy used for shape inference, so each
# inference run copies the graph's structure only, not its weights.
_SKELETON_MAX_ELEMENTS = 64


def _is_op(node: NodeProto, op: str) -> bool:
    return node.op_type == op and node.domain in ("", "ai.onnx")


def _skeleton(model: ModelProto) -> ModelProto:
    """A weightless copy of ``model`` for shape inference: big float initializers become typed inputs."""
    skeleton = ModelProto()
    skeleton.CopyFrom(model)
    graph = skeleton.graph
    keep: list[TensorProto] = []
    inputs = {value.name for value in graph.input}
    for tensor in graph.initializer:
        if (
            tensor.data_type in (TensorProto.INT64, TensorProto.INT32)
            or math.prod(tensor.dims) <= _SKELETON_MAX_ELEMENTS
        ):
            keep.append(tensor)
        elif tensor.name not in inputs:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    _fold_small_constants(graph)
    del graph.value_info[:]  # exporters store the shapes at batch B: inference must derive them afresh
    for output in graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    return skeleton


def _fold_small_constants(graph: GraphProto) -> None:
    """Evaluate nodes whose inputs are all small initializers (the TorchScript exporter computes Slice bounds
    with Mod/Reshape of constants), so shape inference's data propagation can follow Shape → Slice → Concat
    into Reshape targets computed at run time."""
    from onnx.reference import ReferenceEvaluator

    constants = {t.name: t for t in graph.initializer if math.prod(t.dims) <= _SKELETON_MAX_ELEMENTS}
    keep: list[NodeProto] = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        foldable = node.domain in ("", "ai.onnx") and not any(a.type == a.GRAPH for a in node.attribute)
        if not (foldable and inputs and all(name in constants for name in inputs)):
            keep.append(node)
            continue
        try:
            outputs = ReferenceEvaluator(node).run(
                None, {name: numpy_helper.to_array(constants[name]) for name in inputs}
            )
        except Exception:  # an op the reference evaluator lacks: leave the node to shape inference
            keep.append(node)
            continue
        for name, value in zip(node.output, outputs, strict=True):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            if math.prod(tensor.dims) <= _SKELETON_MAX_ELEMENTS:
                constants[name] = tensor
    del graph.node[:]
    graph.node.extend(keep)


def _shapes(skeleton: ModelProto, data_input: str, batch: int) -> dict[str, list[int]]:
    """Static shapes of every tensor when the data input has leading dim ``batch`` (unknown dims left out)."""
    probe = ModelProto()
    probe.CopyFrom(skeleton)
    for value in probe.graph.input:
        if value.name == data_input:
            value.type.tensor_type.shape.dim[0].dim_value = batch
    inferred = shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    found: dict[str, list[int]] = {}
    values: Iterable[ValueInfoProto] = (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
    for value in values:
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            found[value.name] = [int(d.dim_value) for d in dims]
    return found


def _resolve(target: list[int], input_shape: list[int]) -> list[int] | None:
    """The concrete output shape of Reshape(input, target) (0 copies the input dim, -1 takes the rest)."""
    dims = [input_shape[i] if t == 0 and i < len(input_shape) else t for i, t in enumerate(target)]
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        return None
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or math.prod(input_shape) % known:
            return None
        dims[dims.index(-1)] = math.prod(input_shape) // known
    return dims if math.prod(dims) == math.prod(input_shape) else None


def batch_dim_of_target(
    shape_b: list[int], shape_p: list[int], batch: int, probe: int, inner: int, target: list[int]
) -> tuple[int, int] | None:
    """Which dim of ``target`` holds the batch, and what lies inside it there: ``(index, inner)``, or None.

    Args:
        shape_b, shape_p: the Reshape input's shape at batch ``batch`` and at batch ``probe``.
        inner: the size merged inside the batch in the input's batch dim (1 for a plain batch dim).
        target: the constant Reshape target as exported (at batch ``batch``).
    """
    if len(shape_b) != len(shape_p):
        return None
    changed = [k for k, (b, p) in enumerate(zip(shape_b, shape_p, strict=True)) if b != p]
    if len(changed) != 1:
        return None
    k = changed[0]
    if shape_b[k] % (batch * inner) or shape_p[k] != shape_b[k] // batch * probe:
        return None
    outer = shape_b[k] // (batch * inner)
    start = math.prod(shape_b[:k]) * outer  # the batch covers element offsets start … start·batch
    end = start * batch
    resolved = _resolve(target, shape_b)
    if resolved is None:
        return None
    candidates: list[tuple[int, int, int]] = []  # (index, dim start offset, dim end offset)
    before = 1
    for i, size in enumerate(resolved):
        after = before * size
        if before <= start and after >= end and start % before == 0 and after % end == 0:
            candidates.append((i, before, after))
        before = after
    if not candidates:
        return None  # the batch would be split across dims: not a reshape a model does
    # At batch 1 a dim that ends at the batch's offset fits as well as one that starts there: the numbers cannot
    # tell (seq·1, d) from (seq, 1·d). Prefer the batch's own size-1 dim, then a dim that starts with the batch
    # (batch·heads, the attention reshapes); the batch-independence check catches a wrong guess.
    index, _, after = min(candidates, key=lambda c: (not (c[1] == start and c[2] == end), c[1] != start))
    return index, after // end


def _data_input(graph: GraphProto) -> str | None:
    initializers = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    return inputs[0] if len(inputs) == 1 else None


def free_batch_in_reshapes(model: ModelProto, batch: int) -> int | None:
    """Set the batch-holding dim of every constant Reshape target to -1; returns how many were changed.

    Returns None (and changes nothing) when shape inference cannot follow the graph, so the caller can fall
    back to a simpler rule.
    """
    graph = model.graph
    data_input = _data_input(graph)
    if data_input is None:
        return None
    probe = next(p for p in (7, 11, 13) if p != batch)
    skeleton = _skeleton(model)
    try:
        at_batch = _shapes(skeleton, data_input, batch)
        at_probe = _shapes(skeleton, data_input, probe)
    except Exception:  # shape inference refuses the graph (e.g. a custom-domain op): leave it to the fallback
        return None
    initializers = {t.name: t for t in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    inner: dict[str, int] = {data_input: 1}
    changes: list[tuple[str, list[int]]] = []
    for node in graph.node:
        carried = [inner[name] for name in node.input if name in inner]
        if not carried:
            continue
        if not (_is_op(node, "Reshape") and len(node.input) >= 2 and node.input[1] in initializers):
            for name in node.output:
                inner[name] = carried[0]
            continue
        source = node.input[0]
        if source not in at_batch or source not in at_probe or source not in inner:
            continue  # the batch is lost track of here: later Reshapes are left as exported
        target = [int(v) for v in numpy_helper.to_array(initializers[node.input[1]]).reshape(-1).tolist()]
        found = batch_dim_of_target(at_batch[source], at_probe[source], batch, probe, inner[source], target)
        if found is None:
            continue
        index, merged = found
        inner[node.output[0]] = merged
        resolved = _resolve(target, at_batch[source])
        assert resolved is not None
        freed = [-1 if i == index else size for i, size in enumerate(resolved)]
        if freed != target:
            changes.append((node.output[0], freed))
            # Later Reshapes need this one's output at the probe batch: infer again with the change in place.
            _set_target(skeleton.graph, node.output[0], freed, users)
            try:
                at_probe = _shapes(skeleton, data_input, probe)
            except Exception:
                return None
    for output, freed in changes:
        _set_target(graph, output, freed, users)
    return len(changes)


def _set_target(graph: GraphProto, output: str, values: list[int], users: dict[str, int]) -> None:
    """Point the Reshape that makes ``output`` to a target holding ``values`` (its own copy when it is shared)."""
    node = next(n for n in graph.node if n.output and n.output[0] == output)
    shape_name = node.input[1]
    array = np.asarray(values, dtype=np.int64)
    if users.get(shape_name, 0) == 1:
        tensor = next(t for t in graph.initializer if t.name == shape_name)
        tensor.CopyFrom(numpy_helper.from_array(array, shape_name))
        return
    name = f"{shape_name}__dwf_batch_{output}"
    graph.initializer.append(numpy_helper.from_array(array, name))
    node.input[1] = name
