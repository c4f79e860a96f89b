"""``timm:NAME``: timm classifiers sized for the dataset, factorizable, never pretrained."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from torch import nn

from dwf_core.config import TrainConfig
from dwf_core.coverage import coverage
from dwf_core.errors import ModelError
from dwf_core.factorize import factorize, factorized_tensors
from dwf_core.intake import build_model, list_timm_models
from dwf_core.intake.timm_source import TIMM_NAME_PATTERN
from dwf_core.pipeline import RunSpec, run


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here must build without touching the network (no hub, no weight download)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def weight_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def test_resnet18_for_one_channel_28x28_builds_runs_and_factorizes() -> None:
    model = build_model("timm:resnet18", num_classes=10, in_channels=1, input_shape=(1, 28, 28))
    assert model.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    stem = model.get_submodule("conv1")
    assert isinstance(stem, nn.Conv2d) and stem.in_channels == 1
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert coverage(model).factorized_share >= 0.95
    # balanced keeps the weights (VarMatch draws for 11M weights take ~30 s on one core; the pipeline test covers it)
    factorize(model.train(), depth=3, init="balanced")
    assert len(factorized_tensors(model)) == len(weight_modules(model))
    # The residual adds and BatchNorms still work on the factorized weights, and gradients reach the factors.
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert all(f.grad is not None for t in factorized_tensors(model) for f in t.factors())


def test_vit_tiny_gets_the_dataset_image_size() -> None:
    model = build_model("timm:vit_tiny_patch16_224", num_classes=10, input_shape=(3, 32, 32)).eval()
    assert model.get_submodule("patch_embed").img_size == (32, 32)  # 2x2 patches, not 14x14
    assert model.pos_embed.shape[1] == 1 + 4  # class token + patches
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert coverage(model).factorized_share >= 0.95


def test_mobilenet_depthwise_convs_are_factorized() -> None:
    model = build_model("timm:mobilenetv3_small_050", num_classes=10, input_shape=(1, 28, 28))
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels for m in depthwise)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert coverage(model).factorized_share >= 0.95
    factorize(model.train(), depth=2)
    assert len(factorized_tensors(model)) == len(weight_modules(model))


def test_channels_without_a_size_and_the_default() -> None:
    assert build_model("timm:resnet10t", in_channels=2).get_submodule("conv1.0").in_channels == 2  # type: ignore[union-attr]
    assert build_model("timm:resnet10t", num_classes=3).get_submodule("fc").out_features == 3  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("timm:resnet_18", "did you mean timm:resnet18"),
        ("timm:not_a_model_at_all", "timm.list_models"),
        ("timm:bad name!", "lowercase letters"),
        ("timm:", "lowercase letters"),
        ("timm:ResNet18", "lowercase letters"),
        ("timm:hf-hub:timm/resnet18.a1_in1k", "no hf-hub:"),
        ("timm:local-dir:/tmp", "no hf-hub:"),
    ],
)
def test_unknown_or_malformed_names_are_unknown_model(spec: str, says: str) -> None:
    with pytest.raises(ModelError) as err:
        build_model(spec, num_classes=10)
    assert (err.value.code, err.value.param) == ("unknown_model", "model")
    assert says in err.value.message


def test_pretrained_cannot_be_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    # A pretrained tag names weights, not an architecture: refused with the architecture to use instead.
    with pytest.raises(ModelError, match=r"drop the pretrained tag '\.a1_in1k'.*timm:resnet18"):
        build_model("timm:resnet18.a1_in1k")
    # build_model has no way to pass one ...
    with pytest.raises(TypeError):
        build_model("timm:resnet18", pretrained=True)  # type: ignore[call-arg]
    # ... and timm is always asked for random weights, with nothing from the user but the name.
    calls: list[dict[str, Any]] = []
    real = timm.create_model

    def spy(name: str, **kwargs: Any) -> nn.Module:
        calls.append({"name": name, **kwargs})
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    build_model("timm:resnet10t", num_classes=4, input_shape=(1, 16, 16))
    # Twice: on the meta device to count the parameters against the limit, then for real.
    assert calls == [{"name": "resnet10t", "pretrained": False, "num_classes": 4, "in_chans": 1}] * 2


def test_hub_is_offline_while_building_and_restored_after(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen: list[bool] = []
    real = timm.create_model

    def spy(name: str, **kwargs: Any) -> nn.Module:
        seen.append(hub.is_offline_mode())
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    before = hub.is_offline_mode()
    build_model("timm:resnet10t")
    assert seen == [True, True]  # the meta-device count and the real build
    assert hub.is_offline_mode() is before


def test_non_image_inputs_are_refused() -> None:
    with pytest.raises(ModelError) as err:
        build_model("timm:resnet18", input_shape=(784,))
    assert err.value.code == "invalid_input_shape"


def test_name_pattern_covers_every_timm_model() -> None:
    import re

    from api.schemas import TIMM_NAME_PATTERN as API_PATTERN

    names = list_timm_models()
    assert len(names) > 1000 and "resnet18" in names
    assert all(re.fullmatch(TIMM_NAME_PATTERN, n) for n in names)
    assert API_PATTERN == TIMM_NAME_PATTERN  # the API's torch-free copy


def _tiny_npz(path: Path) -> Path:
    """64 train / 32 test 1×16×16 images, 2 classes: class 1 has a bright top half."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        x = rng.integers(0, 60, (n, 1, 16, 16)).astype(np.uint8)
        x[y == 1, :, :8, :] = 250
        return x, y.astype(np.int64)

    x_train, y_train = make(64)
    x_test, y_test = make(32)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.mark.slow
def test_pipeline_sparsifies_a_timm_model(tmp_path: Path) -> None:
    spec = RunSpec(
        model="timm:resnet10t",
        data=str(_tiny_npz(tmp_path / "tiny.npz")),
        out_dir=tmp_path / "out",
        train=TrainConfig(epochs=2, target_sparsity=0.9, batch_size=16, device="cpu", finetune_epochs=0),
        export_onnx=False,
    )
    metrics = run(spec)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["sparsity"] == metrics["sparsity"] > 0.5
    assert metrics["parameters"]["factorized_share"] >= 0.95


def test_a_model_over_the_parameter_limit_is_refused_before_it_is_allocated(monkeypatch: pytest.MonkeyPatch) -> None:
    from dwf_core.intake.timm_source import build_timm_model

    devices: list[str] = []
    real = timm.create_model

    def spy(name: str, **kwargs: Any) -> nn.Module:
        devices.append(str(torch.get_default_device()))
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    with pytest.raises(ModelError) as err:
        build_timm_model("resnet18", num_classes=10, max_params=1_000_000)
    assert (err.value.code, err.value.param) == ("too_large", "model")
    assert "timm:resnet18 has 11,181,642 parameters" in err.value.message and "1,000,000" in err.value.message
    assert devices == ["meta"]  # counted without building it for real
