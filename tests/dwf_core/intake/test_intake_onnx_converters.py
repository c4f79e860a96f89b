"""The extra onnx2torch converters: alias safety against onnx.defs, and numerics against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, defs, helper

from dwf_core.intake import compare_with_onnxruntime, convert_onnx_model, load_onnx
from dwf_core.intake.onnx_converters import REDUCE_OPS, TYPE_ONLY_ALIASES, extra_converters

# Attributes a newer version added that only concern float8/float4 targets, which the reused Cast
# converter refuses anyway.
_HARMLESS_NEW_ATTRIBUTES = {"Cast": {"saturate", "round_mode"}}


def _signature(schema: defs.OpSchema, op: str) -> tuple[object, ...]:
    inputs = [(i.name, i.option) for i in schema.inputs]
    outputs = [(o.name, o.option) for o in schema.outputs]
    attributes = {
        name: (a.type, a.required, a.default_value.SerializeToString())
        for name, a in schema.attributes.items()
        if name not in _HARMLESS_NEW_ATTRIBUTES.get(op, set())
    }
    return inputs, outputs, attributes


@pytest.mark.parametrize(("key", "old"), sorted(TYPE_ONLY_ALIASES.items()))
def test_aliases_only_differ_in_types(key: tuple[str, int], old: int) -> None:
    op, new = key
    new_schema = defs.get_schema(op, max_inclusive_version=new)
    old_schema = defs.get_schema(op, max_inclusive_version=old)
    assert new_schema.since_version == new and old_schema.since_version == old
    assert _signature(new_schema, op) == _signature(old_schema, op)


def test_extra_converter_keys_are_since_versions() -> None:
    for op, version in extra_converters():
        assert defs.get_schema(op, max_inclusive_version=version).since_version == version, (op, version)


def _single_op_model(
    node: onnx.NodeProto, shape: list[int], out_rank: int | None, opset: int, **inits: list[int]
) -> onnx.ModelProto:
    initializers = [helper.make_tensor(k, TensorProto.INT64, [len(v)], v) for k, v in inits.items()]
    rank = len(shape) if out_rank is None else out_rank
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [f"d{i}" for i in range(rank)]) for o in node.output]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outputs, initializer=initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize(
    ("axes", "keepdims", "noop"), [([1], 1, 0), ([-1, 1], 0, 0), (None, 1, 0), (None, 0, 0), ([], 1, 1)]
)
def test_reduce_opset18_matches_onnxruntime(op: str, axes: list[int] | None, keepdims: int, noop: int) -> None:
    inputs = ["x"] if axes is None else ["x", "axes"]
    node = helper.make_node(op, inputs, ["y"], keepdims=keepdims, noop_with_empty_axes=noop)
    reduced = 0 if keepdims or noop else (3 if axes is None else len(axes))
    model = _single_op_model(node, [2, 3, 4], 3 - reduced, 18, **({} if axes is None else {"axes": axes}))
    module = convert_onnx_model(onnx.load_model_from_string(model.SerializeToString()))
    # Positive inputs keep ReduceLogSum / ReduceL2 well defined.
    feeds = torch.rand(2, 3, 4) + 0.5
    with torch.no_grad():
        got = module(feeds)
    import onnxruntime as ort

    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": feeds.numpy()}
    )[0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_reduce_with_runtime_axes_is_refused_by_name(tmp_path: Path) -> None:
    node_shape = helper.make_node("Shape", ["x"], ["s"], start=0, end=1)
    node = helper.make_node("ReduceMean", ["x", "s"], ["y"])
    graph = helper.make_graph(
        [node_shape, node],
        "g",
        # A dynamic dim keeps the axes truly run-time, even for the constant-folding fallback.
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "m.onnx"))
    from dwf_core.errors import ModelError

    with pytest.raises(ModelError) as err:
        load_onnx(tmp_path / "m.onnx")
    assert err.value.code == "onnx_unsupported_op" and "ReduceMean" in err.value.message


@pytest.mark.parametrize("length", [6, 7])
def test_split18_num_outputs(length: int) -> None:
    node = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)
    model = _single_op_model(node, [2, length], None, 18)
    module = convert_onnx_model(onnx.load_model_from_string(model.SerializeToString()))
    diff, _ = compare_with_onnxruntime(model, module)
    assert diff == 0.0


@pytest.mark.parametrize(
    ("op", "attrs", "opset"), [("Gelu", {"approximate": "tanh"}, 20), ("Gelu", {}, 20), ("Mish", {}, 18)]
)
def test_activation_converters(op: str, attrs: dict[str, str], opset: int) -> None:
    model = _single_op_model(helper.make_node(op, ["x"], ["y"], **attrs), [2, 5], None, opset)
    module = convert_onnx_model(onnx.load_model_from_string(model.SerializeToString()))
    diff, scale = compare_with_onnxruntime(model, module)
    assert diff <= 1e-5 and scale > 0.1
