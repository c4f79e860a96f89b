"""ONNX intake trains every weight: MatMul/Gemm/Einsum weights, embeddings, biases and norms become parameters,
attention reshapes that baked in the export's batch size are freed, and both exporters give the same coverage."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from benchmarks.transformer_onnx import SEQ, VOCAB, WIDTH, TinyEncoder
from dwf_core.coverage import coverage
from dwf_core.errors import ModelError
from dwf_core.factorize import WEIGHT_FAN_IN_ATTR, factorize, select_parameters
from dwf_core.intake import load_onnx
from dwf_core.intake.onnx_batch import batch_dim_of_target
from dwf_core.intake.onnx_trainable import _einsum_fan_in
from dwf_core.intake.onnx_verify import check_batch_independence


def _weight_matrices(model: nn.Module) -> int:
    """Elements of the torch model's Linear weights, attention in-projections and embedding tables (what DWF should
    factorize)."""
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear | nn.Embedding))
    return total + sum(m.in_proj_weight.numel() for m in model.modules() if isinstance(m, nn.MultiheadAttention))


@pytest.fixture(scope="module")
def encoder_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, nn.Module]]:
    torch.manual_seed(0)
    model = TinyEncoder().eval()  # the transformer of benchmarks.transformer_onnx
    tokens = torch.randint(0, VOCAB, (2, SEQ))  # batch 2, no dynamic axes: the exports bake it in
    root = tmp_path_factory.mktemp("encoder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (tokens,), str(root / "ts.onnx"), dynamo=False, opset_version=17)
        torch.onnx.export(model, (tokens,), str(root / "dyn.onnx"), dynamo=True, external_data=False)
    return {"torchscript": (root / "ts.onnx", model), "dynamo": (root / "dyn.onnx", model)}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_every_weight_of_an_exported_transformer_trains(
    encoder_exports: dict[str, tuple[Path, nn.Module]], exporter: str
) -> None:
    path, reference = encoder_exports[exporter]
    module = load_onnx(path)
    cov = coverage(module)
    original = sum(p.numel() for p in reference.parameters())
    # Everything trains; the dynamo exporter drops the two all-zero out_proj biases (Gemm without C): 64 elements.
    assert cov.frozen == 0 or cov.frozen <= 4  # scalars only (e.g. 1/√d), counted as frozen only when > 1 element
    assert original - 64 <= cov.trainable <= original
    assert cov.factorized == _weight_matrices(reference)  # in-proj, out-proj, feed-forward, head weights, embedding
    assert cov.warning() is None
    # A batch of 9 (the export used 2) gives each example what it gives alone.
    tokens = torch.randint(0, VOCAB, (9, SEQ))
    with torch.no_grad():
        together = module(tokens)
        alone = torch.cat([module(tokens[i : i + 1]) for i in range(9)])
        torch.testing.assert_close(together, reference(tokens), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    # Gradients reach every parameter through the factorized model.
    factorize(module, depth=3)
    module.train()
    module(tokens).square().mean().backward()
    missing = [name for name, p in module.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_matmul_weights_keep_their_fan_in(encoder_exports: dict[str, tuple[Path, nn.Module]]) -> None:
    module = load_onnx(encoder_exports["torchscript"][0])
    listed = getattr(module.get_submodule("initializers"), WEIGHT_FAN_IN_ATTR)
    params = dict(module.named_parameters())
    shapes = {name: tuple(params[f"initializers.{name}"].shape) for name in listed}
    # x @ W with W stored (in, out): the fan-in is the first dim (32 for in-proj and linear1, 64 for linear2). The
    # embedding table (Gather data) is listed too, with its fan-in read from the shape as for a Linear (None).
    matmul = {name: shape for name, shape in shapes.items() if listed[name] is not None}
    assert sorted(matmul.values()) == sorted([(WIDTH, 3 * WIDTH)] * 2 + [(WIDTH, 64)] * 2 + [(64, WIDTH)] * 2)
    assert all(listed[name] == shape[0] for name, shape in matmul.items())
    assert sorted(shape for name, shape in shapes.items() if listed[name] is None) == [(VOCAB, WIDTH)]
    assert set(select_parameters(module)) >= {f"initializers.{name}" for name in listed}


def _graph_model(nodes: list[onnx.NodeProto], inits: list[TensorProto], path: Path, opset: int = 17) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_shared_initializer_becomes_one_parameter_per_use_and_constants_stay_frozen(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    mask = numpy_helper.from_array(np.array([[0, -np.inf, 0, 0]], dtype=np.float32), "mask")
    scale = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "scale")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["h2"]),  # the same weight again, as a de-duplicating exporter writes
        helper.make_node("Div", ["h2", "scale"], ["h3"]),
        helper.make_node("Add", ["h3", "mask"], ["h4"]),
        helper.make_node("Softmax", ["h4"], ["y"], axis=-1),
    ]
    module = load_onnx(_graph_model(nodes, [w, mask, scale], tmp_path / "shared.onnx"))
    params = dict(module.named_parameters())
    weights = [name for name in params if name.startswith("initializers.")]
    assert len(weights) == 2 and all(params[name].shape == (4, 4) for name in weights)
    assert params[weights[0]] is not params[weights[1]]
    frozen = {name for name, b in module.named_buffers() if b.is_floating_point()}
    assert len(frozen) == 2  # the -inf mask and the scalar divisor
    factorize(module, depth=2)
    module(torch.randn(3, 4)).sum().backward()


def test_a_graph_that_mixes_the_batch_is_refused(tmp_path: Path) -> None:
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
        helper.make_node("Sub", ["x", "m"], ["y"]),
    ]
    path = _graph_model(nodes, [axes], tmp_path / "mix.onnx", opset=18)
    with pytest.raises(ModelError) as err:
        load_onnx(path)
    assert err.value.code in ("onnx_batch_dependent", "onnx_conversion_mismatch")
    assert "batch" in str(err.value)


def test_check_batch_independence_accepts_a_per_example_model() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    assert check_batch_independence(helper.make_model(graph), nn.ReLU()) == 0.0


@pytest.mark.parametrize(
    ("at_b", "at_p", "inner", "target", "expected"),
    [
        ([16, 2, 96], [16, 7, 96], 1, [16, 2, 3, 32], (1, 1)),  # batch in the middle
        ([16, 2, 32], [16, 7, 32], 1, [16, 8, 8], (1, 4)),  # merged with the heads: B·heads
        ([8, 16, 8], [28, 16, 8], 4, [2, 4, 16, 8], (0, 1)),  # split back out of B·heads
        ([16, 2, 4, 8], [16, 7, 4, 8], 1, [32, 32], (0, 1)),  # merged with the sequence: seq·B
        ([32, 32], [112, 32], 1, [16, 2, 32], (1, 1)),  # split back out of seq·B (batch inner)
        ([2, 512, 1, 1], [7, 512, 1, 1], 1, [2, 512], (0, 1)),  # the classifier flatten
        ([16, 2, 32], [16, 7, 32], 1, [16, 64], (1, 32)),  # merged with the width: B·32
    ],
)
def test_batch_dim_of_target(
    at_b: list[int], at_p: list[int], inner: int, target: list[int], expected: tuple[int, int]
) -> None:
    assert batch_dim_of_target(at_b, at_p, 2, 7, inner, target) == expected


def test_batch_one_prefers_the_batch_dim_of_its_own() -> None:
    assert batch_dim_of_target([16, 1, 32], [16, 7, 32], 1, 7, 1, [16, 1, 4, 8]) == (1, 1)
    assert batch_dim_of_target([16, 1, 32], [16, 7, 32], 1, 7, 1, [16, 4, 8]) == (1, 4)


def test_einsum_fan_in() -> None:
    assert _einsum_fan_in("bsd,dh->bsh", 1, torch.Size([32, 64])) == 32
    assert _einsum_fan_in("bsd,hd->bsh", 1, torch.Size([64, 32])) == 32
    assert _einsum_fan_in("...d,dh->...h", 1, torch.Size([32, 64])) is None
