"""The arithmetic a run trains in (``TrainConfig.precision``): float32, or bfloat16 / float16 autocast.

"auto" is what every CUDA run has always done: bf16 autocast on a GPU with bf16 (float16 with a loss scaler on one
without), float32 on a CPU. "fp32" turns autocast off, "bf16" asks for bf16 autocast on a GPU or a CPU: a CPU with
AMX / AVX512-BF16 runs LeNet-5-Caffe's training step about 1.65× faster in it (this 2-core box, one thread: 44 → 27
ms for D = 3, batch 128). What bf16 costs in accuracy: issue 14's measurement in
benchmarks/results/precision/README.md. Autocast runs matmuls and convolutions in the low precision and keeps
elementwise products, the factors' product included, and the loss in float32.
"""

from __future__ import annotations

from typing import Literal

import torch

from dwf_core.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("auto", "fp32", "bf16")
# Devices torch autocasts to bfloat16 (MPS's bf16 autocast depends on the macOS version: not offered).
BF16_DEVICE_TYPES = ("cuda", "cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype a run on ``device`` autocasts to, or None for float32.

    Raises:
        ConfigError: ``precision`` unknown, or "bf16" on a device without bf16 autocast.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", param="precision")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type not in BF16_DEVICE_TYPES or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        raise ConfigError(f"precision 'bf16' is not available on device {device}", param="precision")
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    """How metrics.json names what a run trained in: "fp32", "bf16" or "fp16" (autocast)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
