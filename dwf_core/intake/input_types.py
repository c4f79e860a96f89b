"""What kind of input a loaded model takes, where only its file can tell (an ONNX graph's declared input type)."""

from __future__ import annotations

import os

import onnx
from onnx import TensorProto

_INTEGER_TYPES = frozenset(
    {
        TensorProto.INT8,
        TensorProto.INT16,
        TensorProto.INT32,
        TensorProto.INT64,
        TensorProto.UINT8,
        TensorProto.UINT16,
        TensorProto.UINT32,
        TensorProto.UINT64,
    }
)


def onnx_takes_integers(path: str | os.PathLike[str]) -> bool:
    """True when the first real input of an ONNX graph (already checked by load_onnx) has an integer type.

    Such a graph takes ids or indices (an embedding's Gather), which must reach it as int64, not float32.
    """
    model = onnx.load(os.fspath(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs or not inputs[0].type.HasField("tensor_type"):
        return False
    return inputs[0].type.tensor_type.elem_type in _INTEGER_TYPES
