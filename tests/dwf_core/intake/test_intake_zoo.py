"""Model zoo: every built-in builds, has the published size and gives (N, C) logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dwf_core.errors import ModelError
from dwf_core.intake import build_model, list_torchvision_models, list_zoo


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("lenet_300_100", (2, 1, 28, 28)),
        ("lenet5", (2, 1, 28, 28)),
        ("vgg16", (2, 3, 32, 32)),
        ("vgg19", (2, 3, 32, 32)),
        ("resnet18", (2, 3, 32, 32)),
    ],
)
def test_zoo_models_give_logits(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(*shape)).shape == (2, 7)


def test_list_zoo() -> None:
    assert list_zoo() == ["lenet_300_100", "lenet5", "vgg16", "vgg19", "resnet18"]
    with_tv = list_zoo(include_torchvision=True)
    assert "torchvision:resnet18" in with_tv
    # Only classification models: detection/segmentation/video builders are not offered.
    assert not any("rcnn" in n or "deeplab" in n or "r3d" in n for n in with_tv)


def test_param_counts() -> None:
    assert n_params(build_model("lenet_300_100")) == 266_610
    assert n_params(build_model("lenet5")) == 431_080
    # CIFAR VGG-16 / ResNet-18 sizes used throughout the pruning literature.
    assert n_params(build_model("vgg16")) == 14_728_266
    assert n_params(build_model("resnet18")) == 11_173_962


def test_lenet_300_100_accepts_flat_input_and_input_shape() -> None:
    model = build_model("lenet_300_100")
    assert model(torch.randn(3, 784)).shape == (3, 10)
    wide = build_model("lenet_300_100", input_shape=(3, 32, 32), num_classes=5)
    assert wide(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert wide.fc1.in_features == 3 * 32 * 32  # type: ignore[union-attr]


def test_lenet5_sizes_fc_from_input_shape() -> None:
    model = build_model("lenet5", input_shape=(3, 32, 32))
    # 32 -> conv5 28 -> pool 14 -> conv5 10 -> pool 5: 50 * 5 * 5.
    assert model.fc1.in_features == 1250  # type: ignore[union-attr]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ModelError) as err:
        build_model("lenet5", input_shape=(1, 12, 12))
    assert err.value.code == "invalid_input_shape"


def test_vgg_adaptive_pool_takes_larger_inputs() -> None:
    model = build_model("vgg16", in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)


def test_resnet18_cifar_stem() -> None:
    model = build_model("resnet18")
    conv1 = model.conv1
    assert isinstance(conv1, nn.Conv2d)
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_torchvision_model() -> None:
    model = build_model("torchvision:resnet18", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert "resnet18" in list_torchvision_models()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_in_channels_adapts_first_conv(name: str) -> None:
    model = build_model(f"torchvision:{name}", in_channels=1, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 4)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_torchvision_models_with_auxiliary_heads_give_logits_in_training(name: str) -> None:
    model = build_model(f"torchvision:{name}", num_classes=4, input_shape=(3, 96, 96)).train()
    out = model(torch.randn(2, 3, 96, 96))  # was a (logits, aux…) named tuple in training mode
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)


def test_torchvision_vit_takes_the_datasets_image_size() -> None:
    model = build_model("torchvision:vit_b_32", num_classes=4, input_shape=(3, 64, 64)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)  # built for 224 × 224 by default


def test_torchvision_mnasnet_reloads_plain_tensors() -> None:
    """MNASNet refuses a state dict without its module versions; files and snapshots have none."""
    from dwf_core.state_dict import load_tensors

    model = build_model("torchvision:mnasnet0_5", num_classes=4)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="version"):
        model.load_state_dict(plain)
    load_tensors(model, plain)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ModelError) as err:
        build_model("resnet1800")
    assert err.value.code == "unknown_model" and err.value.param == "model"
    assert "lenet5" in err.value.message and "torchvision:" in err.value.message
    with pytest.raises(ModelError) as err:
        build_model("torchvision:fasterrcnn_resnet50_fpn")
    assert err.value.code == "unknown_model"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": 3, "input_shape": (1, 28, 28)}, "in_channels"),
        ({"input_shape": (1, -28, 28)}, "input_shape"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ModelError) as err:
        build_model("lenet5", **kwargs)  # type: ignore[arg-type]
    assert err.value.param == param
