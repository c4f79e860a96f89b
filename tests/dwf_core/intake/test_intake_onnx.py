"""ONNX intake: graphs from both torch exporters convert, match onnxruntime, and stay parametrizable."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from torch.nn.utils import parametrize

from dwf_core.errors import ModelError
from dwf_core.intake import (
    ModelLimits,
    compare_with_onnxruntime,
    load_onnx,
    read_onnx_model,
    verify_onnx_conversion,
)
from dwf_core.intake.onnx_normalize import normalize_for_onnx2torch

from .conftest import EXPORTERS, MODEL_NAMES, Exported, export, make_model

ATOL = 1e-4
CASES = [(m, e) for m in MODEL_NAMES for e in EXPORTERS]


def load(exported: Exported) -> torch.fx.GraphModule:
    # The dynamo exporter's default output keeps weights in a side file; the CLI allows that.
    return load_onnx(exported.path, allow_external_data=exported.exporter == "dynamo")


def layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def code_of(path: Path, **kwargs: object) -> str:
    with pytest.raises(ModelError) as err:
        load_onnx(path, **kwargs)  # type: ignore[arg-type]
    return err.value.code


@pytest.mark.parametrize(("model_name", "exporter"), CASES)
def test_exported_graphs_convert_and_match_onnxruntime(
    onnx_exports: dict[tuple[str, str], Exported], model_name: str, exporter: str
) -> None:
    exported = onnx_exports[(model_name, exporter)]
    module = load(exported)
    assert not module.training
    diff, scale = compare_with_onnxruntime(read_onnx_model(exported.path, allow_external_data=True), module)
    assert scale > 1e-2, "outputs too small for the comparison to mean anything"
    assert diff <= ATOL
    # Conv/Gemm must come out as real modules so their weights can be parametrized.
    assert layers(module)


class Twice(nn.Module):
    """A trivial parametrization: weight = 2 * (original / 2)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2.0 * (w / 2.0)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w


@pytest.mark.parametrize(("model_name", "exporter"), CASES)
def test_parametrize_then_reexport(
    onnx_exports: dict[tuple[str, str], Exported], model_name: str, exporter: str
) -> None:
    exported = onnx_exports[(model_name, exporter)]
    module = load(exported)
    x = torch.randn(*exported.input_shape)
    with torch.no_grad():
        before = module(x)
    targets = layers(module)
    for layer in targets:
        parametrize.register_parametrization(layer, "weight", Twice())
    with torch.no_grad():
        torch.testing.assert_close(module(x), before, atol=1e-6, rtol=1e-6)
    for layer in targets:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        assert isinstance(layer.weight, nn.Parameter)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=17)  # type: ignore[arg-type]
    reexported = onnx.load_model_from_string(buffer.getvalue())
    diff, _ = compare_with_onnxruntime(reexported, module, n=1)
    assert diff <= ATOL


def test_identity_deduplicated_initializers_folded(tmp_path: Path) -> None:
    # Fresh BatchNorms fold to all-zero conv biases; the TorchScript exporter then shares one
    # initializer through Identity nodes, which onnx2torch's Conv converter cannot look up.
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4)
    ).eval()
    path = export(model, (1, 3, 16, 16), tmp_path / "m.onnx", "torchscript")
    assert "Identity" in {n.op_type for n in onnx.load(str(path)).graph.node}
    _, report = normalize_for_onnx2torch(read_onnx_model(path))
    assert report.identities_folded > 0
    assert len(layers(load_onnx(path))) == 2


def test_dynamo_default_is_opset20_with_allowzero(onnx_exports: dict[tuple[str, str], Exported]) -> None:
    dyn = read_onnx_model(onnx_exports[("resnet18", "dynamo")].path, allow_external_data=True)
    assert [o.version for o in dyn.opset_import if o.domain == ""] == [20]
    _, report = normalize_for_onnx2torch(dyn)
    assert report.allowzero_dropped > 0


def test_batchnorm_folded_in_eval_exports(onnx_exports: dict[tuple[str, str], Exported]) -> None:
    for exporter in EXPORTERS:
        graph = read_onnx_model(onnx_exports[("residual_cnn", exporter)].path, allow_external_data=True).graph
        assert "BatchNormalization" not in {n.op_type for n in graph.node}


def test_verify_onnx_conversion_returns_max_abs_diff(onnx_exports: dict[tuple[str, str], Exported]) -> None:
    exported = onnx_exports[("mlp", "torchscript")]
    module = load(exported)
    diff = verify_onnx_conversion(exported.path, module)
    assert isinstance(diff, float) and 0.0 <= diff <= ATOL
    head = layers(module)[-1]
    with torch.no_grad():
        head.bias.add_(1.0)  # type: ignore[operator]
    assert verify_onnx_conversion(exported.path, module) == pytest.approx(1.0, abs=1e-4)


def test_default_dynamo_export_refused_without_external_data(onnx_exports: dict[tuple[str, str], Exported]) -> None:
    with pytest.raises(ModelError) as err:
        load_onnx(onnx_exports[("mlp", "dynamo")].path)
    assert err.value.code == "onnx_external_data" and "external_data=False" in err.value.message


def test_external_data_refused_then_allowed(tmp_path: Path, onnx_exports: dict[tuple[str, str], Exported]) -> None:
    model = onnx.load(str(onnx_exports[("residual_cnn", "torchscript")].path))
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, size_threshold=0, location="m.data")
    assert code_of(tmp_path / "m.onnx") == "onnx_external_data"
    assert layers(load_onnx(tmp_path / "m.onnx", allow_external_data=True))


def _graph_with_external(tmp_path: Path, location: str, length: int = 16) -> Path:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[weight],
    )
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/w.bin", "link.bin", "absent.bin"])
def test_external_data_locations_confined(tmp_path: Path, location: str) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = _graph_with_external(tmp_path, location)
    os.symlink(tmp_path / "secret.bin", path.parent / "link.bin")
    assert code_of(path, allow_external_data=True) == "onnx_external_data"


def test_external_data_range_checked(tmp_path: Path) -> None:
    path = _graph_with_external(tmp_path, "w.bin", length=8)  # a 2x2 float tensor needs 16 bytes
    (path.parent / "w.bin").write_bytes(b"\0" * 16)
    assert code_of(path, allow_external_data=True) == "onnx_external_data"
    ok = _graph_with_external(tmp_path, "w.bin")
    load_onnx(ok, allow_external_data=True)


@pytest.mark.parametrize("content", [b"\x08\x07garbage" * 50, os.urandom(4096), b""])
def test_garbage_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "m.onnx").write_bytes(content)
    assert code_of(tmp_path / "m.onnx") == "onnx_invalid"


def test_unsupported_op_named(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    with pytest.raises(ModelError) as err:
        load_onnx(tmp_path / "m.onnx")
    assert err.value.code == "onnx_unsupported_op" and "Det (opset 17)" in err.value.message


def test_limits(onnx_exports: dict[tuple[str, str], Exported]) -> None:
    path = onnx_exports[("residual_cnn", "torchscript")].path
    assert code_of(path, limits=ModelLimits(max_onnx_nodes=3)) == "too_large"
    assert code_of(path, limits=ModelLimits(max_params=100)) == "too_large"
    assert code_of(path, limits=ModelLimits(max_file_bytes=100)) == "too_large"


def test_safetensors_given_as_onnx(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "m.onnx")
    assert code_of(tmp_path / "m.onnx") == "unsupported_format"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"optimize": False},  # runtime-computed Reduce axes, CastLike: the onnxscript fallback folds them
        {"opset_version": 23},  # type-only operator version bumps
        {"dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=64)},)},
    ],
    ids=["unoptimized", "opset23", "dynamic_batch"],
)
def test_dynamo_export_variants(tmp_path: Path, kwargs: dict[str, object]) -> None:
    model, shape = make_model("residual_cnn")
    path = export(model, shape, tmp_path / "m.onnx", "dynamo", external_data=False, **kwargs)
    module = load_onnx(path)
    with torch.no_grad():
        torch.testing.assert_close(module(torch.ones(shape)), model(torch.ones(shape)), atol=ATOL, rtol=ATOL)


def test_torchscript_dynamic_batch(tmp_path: Path) -> None:
    model, shape = make_model("residual_cnn")
    path = export(model, shape, tmp_path / "m.onnx", "torchscript", input_names=["x"], dynamic_axes={"x": {0: "n"}})
    module = load_onnx(path)
    x = torch.randn(5, *shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), atol=ATOL, rtol=ATOL)


def test_training_mode_batchnorm_not_silently_accepted(tmp_path: Path) -> None:
    model, shape = make_model("residual_cnn")
    path = export(
        model,
        (2, *shape[1:]),
        tmp_path / "m.onnx",
        "torchscript",
        training=torch.onnx.TrainingMode.TRAINING,
        do_constant_folding=False,
    )
    # Batch statistics cannot be reproduced by an eval-mode module: refused, one way or the other.
    assert code_of(path) in {"onnx_unsupported_op", "onnx_conversion_mismatch"}
