"""Built-in model zoo (LeNets, CIFAR VGG/ResNet) and randomly initialised torchvision and timm classifiers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torchvision
from torch import nn

from dwf_core.errors import ModelError
from dwf_core.intake.timm_source import TIMM_PREFIX, build_timm_model

TORCHVISION_PREFIX = "torchvision:"
MAX_NUM_CLASSES = 1_000_000

# CIFAR VGG layouts: an int is a 3x3 conv with that many output channels, "M" a 2x2 max pool.
_VGG_CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    ],
}


class LeNet300100(nn.Module):
    """LeNet-300-100: a 3-layer ReLU MLP; any input is flattened per sample."""

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        """Build the MLP for ``in_features`` inputs and ``num_classes`` outputs."""
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes)."""
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        logits: torch.Tensor = self.fc3(x)
        return logits


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's MNIST example: 20/50-channel 5x5 convs, max pools, a 500-unit hidden layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, fc_in_features: int = 800) -> None:
        """Build the network; ``fc_in_features`` is 50 * H' * W' after the second pool (800 for 28x28)."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(fc_in_features, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes)."""
        # Caffe's variant has no non-linearity after the convs, only after fc1.
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        logits: torch.Tensor = self.fc2(x)
        return logits


class VGG(nn.Module):
    """CIFAR-style VGG: 3x3 conv + BatchNorm + ReLU stacks, max pools, global average pool, one Linear."""

    def __init__(self, cfg: Sequence[int | str], in_channels: int = 3, num_classes: int = 10) -> None:
        """Build the conv stack described by ``cfg`` (ints are widths, "M" is a 2x2 max pool)."""
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                width = int(item)
                # Conv bias kept (as in the widely used CIFAR reference code) so parameter counts
                # match published sparsity baselines, although BatchNorm makes it redundant.
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        self.features = nn.Sequential(*layers)
        # Adaptive pooling lets inputs larger than 32x32 work; at 32x32 the map is already 1x1.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes)."""
        logits: torch.Tensor = self.classifier(torch.flatten(self.pool(self.features(x)), 1))
        return logits


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv/BN layers with an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        """Build a block mapping ``in_planes`` to ``planes`` channels with the given stride."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return relu(F(x) + shortcut(x))."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max pool)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        """Build the network with BasicBlocks [2, 2, 2, 2] of widths 64..512."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes)."""
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits: torch.Tensor = self.linear(torch.flatten(self.pool(x), 1))
        return logits


def _resolve_shape(
    default_hw: tuple[int, int],
    default_channels: int,
    in_channels: int | None,
    input_shape: tuple[int, ...] | None,
) -> tuple[int, ...]:
    """Merge ``in_channels`` and ``input_shape`` into one per-sample shape, checking they agree."""
    if input_shape is None:
        return (in_channels if in_channels is not None else default_channels, *default_hw)
    shape = tuple(input_shape)
    if not shape or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape):
        raise ModelError(
            f"input_shape must be a non-empty tuple of positive ints (per sample, no batch dim), got {input_shape!r}",
            code="invalid_input_shape",
            param="input_shape",
        )
    if in_channels is not None and len(shape) >= 2 and shape[0] != in_channels:
        raise ModelError(
            f"in_channels={in_channels} disagrees with input_shape={shape} (channels first)",
            code="invalid_input_shape",
            param="in_channels",
        )
    return shape


def _require_chw(name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return ``shape`` as (C, H, W) or raise if it is not image-shaped."""
    if len(shape) != 3:
        raise ModelError(
            f"{name} needs a (channels, height, width) input_shape, got {shape}",
            code="invalid_input_shape",
            param="input_shape",
        )
    return shape[0], shape[1], shape[2]


def _build_lenet_300_100(num_classes: int, in_channels: int | None, input_shape: tuple[int, ...] | None) -> nn.Module:
    """Build LeNet-300-100 with in_features = prod(per-sample input shape)."""
    shape = _resolve_shape((28, 28), 1, in_channels, input_shape)
    return LeNet300100(in_features=math.prod(shape), num_classes=num_classes)


def _build_lenet5(num_classes: int, in_channels: int | None, input_shape: tuple[int, ...] | None) -> nn.Module:
    """Build Caffe LeNet-5, sizing fc1 from the spatial size left after two conv5 + pool2 stages."""
    c, h, w = _require_chw("lenet5", _resolve_shape((28, 28), 1, in_channels, input_shape))
    # Each stage: valid 5x5 conv (-4) then floor-halving max pool.
    out_h, out_w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    if (h - 4) // 2 < 5 or (w - 4) // 2 < 5 or out_h < 1 or out_w < 1:
        raise ModelError(
            f"lenet5 needs inputs of at least 16x16, got {h}x{w}",
            code="invalid_input_shape",
            param="input_shape",
        )
    return LeNet5(in_channels=c, num_classes=num_classes, fc_in_features=50 * out_h * out_w)


def _check_cifar_input(name: str, in_channels: int | None, input_shape: tuple[int, ...] | None, min_hw: int) -> int:
    """Return the channel count for a CIFAR-style net, refusing inputs its pooling cannot handle."""
    c, h, w = _require_chw(name, _resolve_shape((32, 32), 3, in_channels, input_shape))
    if h < min_hw or w < min_hw:
        raise ModelError(
            f"{name} needs inputs of at least {min_hw}x{min_hw}, got {h}x{w}",
            code="invalid_input_shape",
            param="input_shape",
        )
    return c


def _build_vgg(name: str) -> Callable[[int, int | None, tuple[int, ...] | None], nn.Module]:
    """Return a builder for the CIFAR VGG named ``name``."""

    def build(num_classes: int, in_channels: int | None, input_shape: tuple[int, ...] | None) -> nn.Module:
        """Build the VGG; five 2x2 pools need at least 32x32 inputs."""
        c = _check_cifar_input(name, in_channels, input_shape, 32)
        return VGG(_VGG_CFGS[name], in_channels=c, num_classes=num_classes)

    return build


def _build_resnet18(num_classes: int, in_channels: int | None, input_shape: tuple[int, ...] | None) -> nn.Module:
    """Build the CIFAR ResNet-18 (three stride-2 stages need at least 8x8 inputs)."""
    c = _check_cifar_input("resnet18", in_channels, input_shape, 8)
    return CifarResNet18(in_channels=c, num_classes=num_classes)


_ZOO: dict[str, Callable[[int, int | None, tuple[int, ...] | None], nn.Module]] = {
    "lenet_300_100": _build_lenet_300_100,
    "lenet5": _build_lenet5,
    "vgg16": _build_vgg("vgg16"),
    "vgg19": _build_vgg("vgg19"),
    "resnet18": _build_resnet18,
}


def list_torchvision_models() -> list[str]:
    """Return torchvision's classification model names (detection, segmentation, video excluded)."""
    # module=torchvision.models lists only the top-level (classification) builders.
    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_zoo(*, include_torchvision: bool = False) -> list[str]:
    """List the model specs ``build_model`` accepts.

    Args:
        include_torchvision: Also list every ``torchvision:NAME`` classification model.

    Returns:
        Built-in zoo names, followed by ``torchvision:NAME`` specs when requested.
    """
    names = list(_ZOO)
    if include_torchvision:
        names += [TORCHVISION_PREFIX + n for n in list_torchvision_models()]
    return names


def _replace_first_conv(model: nn.Module, name: str, in_channels: int) -> None:
    """Swap the first registered Conv2d for one taking ``in_channels`` inputs (fresh random weights)."""
    found = "no nn.Conv2d at all"
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            # Registration order is the forward order for torchvision classifiers; a grouped first conv
            # or one not reading the RGB input cannot be swapped blindly.
            if module.in_channels != 3 or module.groups != 1:
                found = f"{module_name!r} (in_channels={module.in_channels}, groups={module.groups})"
                break
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                kernel_size=module.kernel_size,  # type: ignore[arg-type]
                stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding,  # type: ignore[arg-type]
                dilation=module.dilation,  # type: ignore[arg-type]
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            parent_name, _, attr = module_name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, new)
            return
    raise ModelError(
        f"cannot adapt torchvision:{name} to in_channels={in_channels}: expected its first layer to be a plain "
        f"3-channel nn.Conv2d, found {found}; use in_channels=3",
        code="unsupported_in_channels",
        param="in_channels",
    )


# GoogLeNet and Inception v3 return (logits, aux logits) tuples in training mode with their auxiliary heads, which
# their original recipes used and a pruned classifier does not need: built without them, they return logits.
_TORCHVISION_OPTIONS: dict[str, dict[str, object]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _torchvision_size(name: str, h: int, w: int) -> dict[str, object]:
    """Builder arguments that fit torchvision's ViTs (built for 224 × 224 by default) to the data's images.

    They take square images divisible by their patch size; other sizes, and other fixed-size architectures (MaxViT),
    keep the builder's default, and the check of the model on the dataset's inputs names the mismatch.
    """
    if name.startswith("vit_"):
        patch = int(name.split("_")[-1])
        return {"image_size": h} if h == w and h % patch == 0 else {}
    return {}


def _build_torchvision(
    name: str, num_classes: int, in_channels: int | None, input_shape: tuple[int, ...] | None
) -> nn.Module:
    """Build a randomly initialised torchvision classifier, adapting its stem to ``in_channels``."""
    valid = list_torchvision_models()
    if name not in valid:
        raise ModelError(
            f"unknown torchvision classification model {name!r}; valid names: {', '.join(valid)}",
            code="unknown_model",
            param="model",
        )
    channels = in_channels
    options: dict[str, object] = dict(_TORCHVISION_OPTIONS.get(name, {}))
    if input_shape is not None:
        channels, h, w = _require_chw(TORCHVISION_PREFIX + name, _resolve_shape((0, 0), 3, in_channels, input_shape))
        options.update(_torchvision_size(name, h, w))
    # weights=None always: this service never downloads pretrained weights.
    model: nn.Module = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    if channels is not None and channels != 3:
        _replace_first_conv(model, name, channels)
    return model


def _build_timm(name: str, num_classes: int, in_channels: int | None, input_shape: tuple[int, ...] | None) -> nn.Module:
    """Build a randomly initialised timm model for the dataset's channels and (fixed-size models) image size."""
    if input_shape is None:
        return build_timm_model(name, num_classes=num_classes, in_channels=in_channels)
    c, h, w = _require_chw(TIMM_PREFIX + name, _resolve_shape((0, 0), 3, in_channels, input_shape))
    return build_timm_model(name, num_classes=num_classes, in_channels=c, img_size=(h, w))


def build_model(
    spec: str,
    *,
    num_classes: int = 10,
    in_channels: int | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """Build a randomly initialised model from a zoo name, ``torchvision:NAME`` or ``timm:NAME``.

    Args:
        spec: One of ``list_zoo()``, ``torchvision:NAME`` for a torchvision classification model or
            ``timm:NAME`` for a timm architecture (``list_timm_models()``); never with pretrained weights.
        num_classes: Number of output logits.
        in_channels: Input channels; defaults to the model's natural value (1 for LeNets, 3 otherwise).
        input_shape: Per-sample input shape without the batch dim, e.g. (1, 28, 28); sizes the LeNets'
            first fully connected layer, gives timm's fixed-size models (ViTs) their ``img_size`` and is
            checked against the other models' needs.

    Returns:
        The model in training mode, producing (N, num_classes) logits.

    Raises:
        ModelError: ``unknown_model`` for an unknown spec, ``invalid_argument`` for a bad ``num_classes``
            or ``in_channels``, ``invalid_input_shape`` for an unusable ``input_shape``,
            ``unsupported_in_channels`` when a torchvision stem cannot be adapted, ``model_build_failed`` when
            timm cannot build its architecture for these classes, channels and size.
    """
    if not isinstance(spec, str):
        raise ModelError(f"model spec must be a string, got {type(spec).__name__}", code="unknown_model", param="model")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 1 <= num_classes <= MAX_NUM_CLASSES:
        raise ModelError(
            f"num_classes must be an int in [1, {MAX_NUM_CLASSES}], got {num_classes!r}",
            code="invalid_argument",
            param="num_classes",
        )
    if in_channels is not None and (
        not isinstance(in_channels, int) or isinstance(in_channels, bool) or not 1 <= in_channels <= 4096
    ):
        raise ModelError(
            f"in_channels must be an int in [1, 4096], got {in_channels!r}",
            code="invalid_argument",
            param="in_channels",
        )
    if input_shape is not None:
        input_shape = tuple(input_shape)
    if spec.startswith(TORCHVISION_PREFIX):
        return _build_torchvision(spec[len(TORCHVISION_PREFIX) :], num_classes, in_channels, input_shape)
    if spec.startswith(TIMM_PREFIX):
        return _build_timm(spec[len(TIMM_PREFIX) :], num_classes, in_channels, input_shape)
    builder = _ZOO.get(spec)
    if builder is None:
        raise ModelError(
            f"unknown model {spec!r}; valid names: {', '.join(_ZOO)}, torchvision:NAME for a torchvision "
            "classification model (e.g. torchvision:resnet18) or timm:NAME for a timm one (e.g. timm:resnet18)",
            code="unknown_model",
            param="model",
        )
    return builder(num_classes, in_channels, input_shape)
