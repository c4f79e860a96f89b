"""Walking every tensor of an ONNX model, and reading external tensor data confined to the model's folder."""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto

from dwf_core.errors import ModelError

_TYPED_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _tensors_in_graph(graph: GraphProto) -> Iterator[TensorProto]:
    """Yield every tensor stored in a graph: initializers, sparse parts, attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _tensors_in_node(node)


def _tensors_in_node(node: NodeProto) -> Iterator[TensorProto]:
    """Yield every tensor held by a node's attributes, recursing into subgraphs."""
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR:
            yield attr.t
        elif attr.type == AttributeProto.TENSORS:
            yield from attr.tensors
        elif attr.type == AttributeProto.SPARSE_TENSOR:
            yield from _sparse_parts(attr.sparse_tensor)
        elif attr.type == AttributeProto.SPARSE_TENSORS:
            for sparse in attr.sparse_tensors:
                yield from _sparse_parts(sparse)
        elif attr.type == AttributeProto.GRAPH:
            yield from _tensors_in_graph(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            for g in attr.graphs:
                yield from _tensors_in_graph(g)


def _sparse_parts(sparse: SparseTensorProto) -> Iterator[TensorProto]:
    """Yield the two dense tensors of a sparse tensor."""
    yield sparse.values
    yield sparse.indices


def all_tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Yield every tensor in the model, including local function bodies."""
    yield from _tensors_in_graph(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _tensors_in_node(node)


def count_nodes(graph: GraphProto) -> int:
    """Count nodes in a graph and all its subgraphs."""
    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                total += count_nodes(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                total += sum(count_nodes(g) for g in attr.graphs)
    return total


def _tensor_nbytes(tensor: TensorProto) -> int | None:
    """Bytes a dense tensor's raw data must have, or None for types without a fixed itemsize."""
    try:
        itemsize = int(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return None
    # 4-bit and other packed types report a 1-byte numpy type but store two values per byte.
    packed = {TensorProto.INT4, TensorProto.UINT4, getattr(TensorProto, "FLOAT4E2M1", -1)}
    numel = int(math.prod(tensor.dims))
    return (numel + 1) // 2 if tensor.data_type in packed else numel * itemsize


def _external_location(tensor: TensorProto) -> tuple[str, int, int | None]:
    """Parse a tensor's external_data entries into (location, offset, length)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError as exc:
        raise ModelError(
            f"tensor {tensor.name!r} has a malformed external_data offset/length",
            code="onnx_external_data",
            param=tensor.name,
        ) from exc
    return info.get("location", ""), offset, length


def _open_sibling(base_dir: Path, location: str, tensor_name: str) -> tuple[Path, int]:
    """Validate an external-data location as a plain regular file next to the model; return path, size."""
    # Only a bare file name in the model's own directory: no separators, no parent refs, no links,
    # so a crafted model cannot read arbitrary files from the host.
    if (
        not location
        or location in (".", "..")
        or any(c in location for c in ("/", "\\", "\x00", ":"))
        or location != os.path.basename(location)
    ):
        raise ModelError(
            f"tensor {tensor_name!r} points at external data {location!r:.200}; only a plain file name "
            "next to the model is allowed",
            code="onnx_external_data",
            param=tensor_name,
        )
    path = base_dir / location
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ModelError(
            f"external data file {location!r} for tensor {tensor_name!r} is missing next to the model",
            code="onnx_external_data",
            param=tensor_name,
        ) from exc
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(
            f"external data {location!r} is not a regular file (symlinks are refused)",
            code="onnx_external_data",
            param=tensor_name,
        )
    return path, st.st_size


def inline_external_data(model: ModelProto, base_dir: Path, budget: int) -> None:
    """Read external tensor data from sibling files into the tensors, within a total byte budget."""
    handles: dict[str, tuple[BinaryIO, int]] = {}
    read_total = 0
    try:
        for tensor in all_tensors(model):
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            location, offset, length = _external_location(tensor)
            if location not in handles:
                path, size = _open_sibling(base_dir, location, tensor.name)
                handles[location] = (path.open("rb"), size)
            handle, size = handles[location]
            expected = _tensor_nbytes(tensor)
            if expected is None:
                raise ModelError(
                    f"tensor {tensor.name!r} has a data type that cannot be stored externally",
                    code="onnx_external_data",
                    param=tensor.name,
                )
            length = expected if length is None else length
            if length != expected or offset < 0 or offset + length > size:
                raise ModelError(
                    f"tensor {tensor.name!r}: external range [{offset}, {offset + length}) of {location!r} "
                    f"({size} bytes) does not hold the {expected} bytes its shape needs",
                    code="onnx_external_data",
                    param=tensor.name,
                )
            read_total += length
            if read_total > budget:
                raise ModelError(f"external data exceeds the {budget}-byte limit", code="too_large", param="path")
            handle.seek(offset)
            data = handle.read(length)
            if len(data) != length:
                raise ModelError(
                    f"external data {location!r} changed while being read", code="onnx_external_data", param=tensor.name
                )
            # Drop any typed payload a crafted tensor carries besides the external reference.
            for field in _TYPED_DATA_FIELDS:
                tensor.ClearField(field)
            tensor.raw_data = data
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
    finally:
        for handle, _ in handles.values():
            handle.close()
