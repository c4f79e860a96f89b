"""dwf_core.compact: the compact model computes what the sparse one does, is smaller, and rebuilds from its file."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from dwf_core.compact import CompactionSkipped, IndexedLinear, compact_model, load_compact, save_compact, write_compact
from dwf_core.compact.groups import MAX_GROUP_RESHAPES
from dwf_core.compact.inputs import OffsetConv2d
from dwf_core.errors import WeightsError
from dwf_core.intake import build_model, load_onnx

MNIST = (1, 28, 28)


def _assert_same(reference: nn.Module, compact: nn.Module, shape: tuple[int, ...], atol: float = 1e-4) -> None:
    """The compact model's logits equal the reference's on fresh random inputs."""
    x = torch.randn(7, *shape, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        torch.testing.assert_close(compact.eval()(x), reference.eval()(x), atol=atol, rtol=0)


def _lenet_300_100() -> nn.Module:
    """LeNet-300-100 with 90% random zeros, 100 dead inputs, 60 fc1 units without inputs (their constant ReLU(bias)
    must reach fc2's bias: half of the biases are positive), 40 fc2 units nobody reads."""
    torch.manual_seed(0)
    model = build_model("lenet_300_100", num_classes=10, in_channels=1, input_shape=MNIST).eval()
    with torch.no_grad():
        for layer in (model.fc1, model.fc2, model.fc3):
            layer.weight.mul_(torch.rand_like(layer.weight) > 0.9)
        model.fc1.weight[:, 200:300] = 0
        model.fc1.weight[:60] = 0
        model.fc1.bias[:60] = torch.linspace(-1, 1, 60)
        model.fc3.weight[:, :40] = 0
    return model


def test_lenet_300_100_loses_dead_units_and_inputs_with_the_same_outputs() -> None:
    model = _lenet_300_100()
    result = compact_model(model, torch.randn(8, *MNIST))
    compact = result.model
    assert compact.fc1.out_features <= 300 - 60 and compact.fc2.out_features <= 100 - 40
    assert isinstance(compact.fc1, IndexedLinear) and compact.fc1.in_features <= 784 - 100
    assert compact.fc3.out_features == 10  # the logits are never touched
    assert result.channels.folded >= 30  # the positive-bias units' constants went into fc2's bias
    assert result.max_abs_diff < 1e-4
    _assert_same(model, compact, MNIST)


def test_the_live_input_layer_exports_as_one_gemm(tmp_path: Path) -> None:
    """The gathered rows feed one Gemm (bias and ReLU fused by onnxruntime), not MatMul + Transpose + Add, which ran
    21% slower at batch 1 (IndexedLinear.forward); the ONNX file computes what the module does, batch 1 and 5."""
    compact = compact_model(_lenet_300_100(), torch.randn(8, *MNIST)).model.eval()
    path = tmp_path / "c.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            compact, (torch.zeros(1, *MNIST),), str(path), dynamo=False, opset_version=17,
            input_names=["x"], dynamic_axes={"x": {0: "n"}},
        )  # fmt: skip
    import onnx

    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("Gather") >= 1 and ops.count("Gemm") == 3 and "MatMul" not in ops and "Add" not in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = torch.randn(n, *MNIST, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            expected = compact(x).numpy()
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-5, rtol=0)


def test_compact_file_rebuilds_the_model_from_the_original_architecture(tmp_path: Path) -> None:
    model = _lenet_300_100()
    result = compact_model(model, torch.randn(8, *MNIST))
    path = tmp_path / "model.compact.safetensors"
    save_compact(result.model, result.spec, path, metadata={"model": "lenet_300_100"})
    fresh = build_model("lenet_300_100", num_classes=10, in_channels=1, input_shape=MNIST)
    rebuilt = load_compact(fresh, path)
    assert rebuilt.fc1.weight.shape == result.model.fc1.weight.shape
    _assert_same(model, rebuilt, MNIST)


def test_lenet5_folds_dead_filters_through_the_pool_and_drops_flattened_columns() -> None:
    torch.manual_seed(1)
    model = build_model("lenet5", num_classes=10, in_channels=1, input_shape=MNIST).eval()
    with torch.no_grad():
        model.conv1.weight[:5] = 0  # constant (bias) maps: max-pooled, then folded into conv2's bias (no padding)
        model.conv2.weight[:, 5:8] = 0  # conv1 channels 5..7 unread
        model.fc1.weight[:, : 16 * 10] = 0  # conv2 channels 0..9 feed only zero columns after the flatten
        model.fc1.weight[100:200] = 0
    result = compact_model(model, torch.randn(8, *MNIST))
    compact = result.model
    assert compact.conv1.out_channels == 20 - 8
    assert compact.conv2.out_channels == 50 - 10 and compact.fc1.in_features == (50 - 10) * 16
    assert compact.fc1.out_features == 400
    _assert_same(model, compact, MNIST)


def _resnet18() -> tuple[nn.Module, dict[str, int]]:
    """torchvision ResNet-18 with BatchNorm statistics and dead channels of three kinds."""
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2)
                bn.bias.uniform_(-1, 1)
        # Residual stream of layer1, channels 0..7: every reader (both blocks' conv1, layer2's entry) ignores them,
        # so they go from the stem conv, bn1, both blocks' conv2/bn2 at once.
        for conv in (model.layer1[0].conv1, model.layer1[1].conv1, model.layer2[0].conv1):
            conv.weight[:, :8] = 0
        model.layer2[0].downsample[0].weight[:, :8] = 0
        # layer3.0.conv1 filters 0..15 die; bn1's bias makes ReLU's output 0 for 0..7 and positive for 8..15,
        # whose constant the zero-padded conv2 sees only inside the image: a fixed output map takes it over.
        model.layer3[0].conv1.weight[:16] = 0
        model.layer3[0].bn1.running_mean[:16] = 0
        model.layer3[0].bn1.bias[:8] = -1.0
        model.layer3[0].bn1.bias[8:16] = 1.0
    return model, {"stem": 64 - 8, "layer3.0.conv1": 256 - 16}


def test_resnet18_removes_residual_groups_and_constant_channels_behind_padding(tmp_path: Path) -> None:
    model, expected = _resnet18()
    shape = (3, 32, 32)  # layer3 then sees 2×2 maps, where every position touches the padding
    result = compact_model(model, torch.randn(4, *shape))
    compact = result.model
    assert compact.conv1.out_channels == expected["stem"]
    assert compact.layer1[1].bn2.num_features == expected["stem"]
    assert compact.layer3[0].conv1.out_channels == expected["layer3.0.conv1"]
    assert isinstance(compact.layer3[0].conv2, OffsetConv2d)
    _assert_same(model, compact, shape)
    save_compact(compact, result.spec, tmp_path / "r.safetensors", metadata={})
    rebuilt = load_compact(torchvision.models.resnet18(num_classes=10), tmp_path / "r.safetensors")
    _assert_same(model, rebuilt, shape)


class _DepthwiseNet(nn.Module):
    """conv → BN → ReLU → depthwise 3×3 → BN → ReLU → pointwise → pool → Linear (a MobileNet block)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.pw = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(self.stem(x)))
        return self.fc(y.mean(dim=(2, 3)))


def test_depthwise_conv_ties_its_input_and_output_channels() -> None:
    torch.manual_seed(3)
    model = _DepthwiseNet().eval()
    with torch.no_grad():
        model.pw.weight[:, :5] = 0  # depthwise outputs 0..4 unread: stem and depthwise channels 0..4 go
        model.fc.weight[:, 20:] = 0  # pointwise outputs 20..31 unread
    compact = compact_model(model, torch.randn(4, 3, 16, 16)).model
    assert compact.stem[0].out_channels == 11 and compact.dw[0].groups == 11 and compact.pw.out_channels == 20
    _assert_same(model, compact, (3, 16, 16))


def test_onnx_intake_graph_is_compacted(tmp_path: Path) -> None:
    """An onnx2torch graph (the service's upload path) goes through the same dependency graph."""
    model = _lenet_300_100()
    path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, *MNIST),), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})  # fmt: skip
    graph = load_onnx(path)
    result = compact_model(graph, torch.randn(8, *MNIST))
    same_in_torch = compact_model(model, torch.randn(8, *MNIST)).model
    assert sum(p.numel() for p in result.model.parameters()) == sum(p.numel() for p in same_in_torch.parameters())
    _assert_same(graph, result.model, MNIST)


def test_write_compact_exports_an_onnx_graph_with_the_same_outputs(tmp_path: Path) -> None:
    model = _lenet_300_100()
    outcome = write_compact(model, torch.randn(8, *MNIST), tmp_path, metadata={"model": "lenet_300_100"})
    assert set(outcome.files) == {"model.compact.safetensors", "model.compact.onnx"}
    assert outcome.info["params"] < outcome.info["dense_params"] and outcome.info["onnx"]["exported"]
    x = torch.randn(5, *MNIST)
    session = ort.InferenceSession(str(tmp_path / "model.compact.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=0)


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x


class _ChannelMix(nn.Module):
    """``y.sum(1)`` reads every channel of ``y`` into one: Torch-Pruning takes the sum for an elementwise op."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)
        self.c = nn.Linear(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        return self.b(y) + self.c(y.sum(dim=1, keepdim=True))


class _ChannelShuffle(nn.Module):
    """ShuffleNet V2's split, branch, concatenation and channel shuffle: Torch-Pruning's graph fails on it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.relu(self.conv(x)).chunk(2, dim=1)
        y = torchvision.models.shufflenetv2.channel_shuffle(torch.cat((a, self.branch(b)), dim=1), 2)
        return self.fc(y.mean((2, 3)))


def test_models_that_return_no_tensor_are_skipped_with_a_reason(tmp_path: Path) -> None:
    model = _TupleOut().eval()
    with torch.no_grad():
        model.fc.weight[:, :2] = 0  # something that looks dead
    outcome = write_compact(model, torch.randn(4, 4), tmp_path, metadata={})
    assert outcome.result is None and "not a tensor" in outcome.info["skipped"]
    assert not list(tmp_path.iterdir())  # no compact artifacts
    with pytest.raises(CompactionSkipped):
        compact_model(model, torch.randn(4, 4))


@pytest.mark.parametrize(
    ("model", "shape", "dead_columns"),
    [(_ChannelMix(), (6,), ("b", 2)), (_ChannelShuffle(), (3, 8, 8), ("fc", 3))],
    ids=["channel-mixing-sum", "channel-shuffle"],
)
def test_where_the_channel_graph_fails_linears_still_read_only_their_live_columns(
    model: nn.Module, shape: tuple[int, ...], dead_columns: tuple[str, int], tmp_path: Path
) -> None:
    name, dead = dead_columns
    layer = model.get_submodule(name)
    with torch.no_grad():
        layer.weight[:, :dead] = 0
    outcome = write_compact(model.eval(), torch.randn(4, *shape), tmp_path, metadata={})
    assert outcome.result is not None
    assert outcome.info["channels_skipped"].startswith("dependency graph failed")
    assert outcome.info["removed_channels"] == {}
    assert outcome.info["selected_inputs"] == {name: {"before": layer.in_features, "kept": layer.in_features - dead}}
    assert isinstance(outcome.result.model.get_submodule(name), IndexedLinear)
    _assert_same(model, outcome.result.model, shape)
    rebuilt = load_compact(copy.deepcopy(model), tmp_path / "model.compact.safetensors")
    _assert_same(model, rebuilt, shape)


def test_where_the_channel_graph_fails_and_nothing_else_is_dead_the_model_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(model: nn.Module, batches: list[torch.Tensor]) -> None:
        raise ZeroDivisionError("integer division or modulo by zero")  # what ShuffleNet V2's shuffle raises

    monkeypatch.setattr("dwf_core.compact.model.remove_dead_channels", fails)
    model = _ChannelShuffle().eval()  # no dead Linear column, no attention
    outcome = write_compact(model, torch.randn(4, 3, 8, 8), tmp_path, metadata={})
    assert outcome.result is None
    assert outcome.info["skipped"] == "dependency graph failed: ZeroDivisionError: integer division or modulo by zero"
    assert not list(tmp_path.iterdir())


def test_load_compact_refuses_files_that_do_not_fit(tmp_path: Path) -> None:
    model = _lenet_300_100()
    result = compact_model(model, torch.randn(8, *MNIST))
    path = tmp_path / "c.safetensors"
    save_compact(result.model, result.spec, path, metadata={})
    with pytest.raises(WeightsError, match="does not have") as info:
        load_compact(build_model("lenet5", num_classes=10, in_channels=1, input_shape=MNIST), path)
    assert info.value.code == "invalid_compact_file"
    plain = tmp_path / "plain.safetensors"
    from dwf_core.export import save_dense

    save_dense(model, plain)
    with pytest.raises(WeightsError, match="no compact-model spec"):
        load_compact(copy.deepcopy(model), plain)
    bad = tmp_path / "bad.safetensors"
    save_compact(result.model, {"fc1": {"attrs": {"padding": 3}}}, bad, metadata={})
    with pytest.raises(WeightsError, match="cannot set"):
        load_compact(build_model("lenet_300_100", num_classes=10), bad)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(WeightsError, match="not a readable"):
        load_compact(model, tmp_path / "junk.safetensors")


def test_an_exported_vit_is_screened_before_torch_pruning_expands_its_attention_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suite's ViT from the TorchScript exporter: the patch conv's group runs through the residual stream's
    LayerNorms and 43 token/head reshapes, where Torch-Pruning's index mapping grew past 12 GB (the suite's CI
    smoke run was OOM-killed). The screen refuses that group from node types alone, without expanding it."""
    from benchmarks.suite_models import TinyViT, export_onnx
    from dwf_core.compact import groups

    torch.manual_seed(0)
    graph = load_onnx(export_onnx(TinyViT(), MNIST, tmp_path / "vit.onnx", "torchscript")).eval()
    expanded: list[nn.Module] = []
    real = groups.tp.DependencyGraph.get_pruning_group

    def record(self: object, module: nn.Module, *args: object, **kwargs: object) -> object:
        expanded.append(module)
        return real(self, module, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(groups.tp.DependencyGraph, "get_pruning_group", record)
    result = compact_model(graph, torch.randn(4, *MNIST))
    patch_conv = next(m for m in graph.modules() if isinstance(m, nn.Conv2d))
    assert patch_conv not in expanded
    assert result.channels.skipped["unsupported LN"] >= 1
    _assert_same(graph, result.model, MNIST)


class _Reshapes(nn.Module):
    """A conv whose channels go through five reshapes before a Linear reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        for shape in ((-1, 4, 64), (-1, 4, 8, 8), (-1, 4, 64), (-1, 4, 8, 8)):
            y = y.reshape(shape)
        return self.fc(y.flatten(1))


def test_a_group_through_too_many_reshapes_is_left_whole_with_its_reason() -> None:
    model = _Reshapes().eval()
    with torch.no_grad():
        model.conv.weight[1] = 0  # a dead channel the screen must give up on
    result = compact_model(model, torch.randn(4, 1, 8, 8))
    assert result.channels.skipped[f"more than {MAX_GROUP_RESHAPES} reshapes"] == 1
    assert result.channels.removed == {}
    _assert_same(model, result.model, (1, 8, 8))


class _ReadsItsWeight(nn.Module):
    """As torchvision's Swin attention: the forward hands a Linear's weight to F.linear instead of calling it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(32, 16)
        self.head = nn.Linear(16, 4)
        with torch.no_grad():
            self.proj.weight[:, :12] = 0  # dead input columns: IndexedLinear would gather the other 20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(nn.functional.linear(x, self.proj.weight, self.proj.bias)))


def test_a_forward_that_reads_a_linears_weight_keeps_its_columns_and_still_compacts() -> None:
    model = _ReadsItsWeight().eval()
    result = compact_model(model, torch.randn(4, 32))
    assert result.inputs == {} and result.inputs_skipped is not None
    assert "reading only live input columns broke the model" in result.inputs_skipped
    assert result.to_dict()["selected_inputs_skipped"] == result.inputs_skipped
    assert not any(isinstance(m, IndexedLinear) for m in result.model.modules())
    _assert_same(model, result.model, (32,))
    # Where every forward calls its Linear, the columns are gathered as before.
    plain = compact_model(_lenet_300_100(), torch.randn(4, 1, 28, 28))
    assert plain.inputs and plain.inputs_skipped is None
