"""Size bounds applied to every user-supplied model or weights file before it is parsed."""

from __future__ import annotations

from dataclasses import dataclass

from dwf_core.errors import ConfigError

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class ModelLimits:
    """Upper bounds for model intake; anything larger is refused with code ``too_large``.

    Attributes:
        max_file_bytes: Largest accepted file (ONNX protobuf is capped at 2 GiB anyway).
        max_header_bytes: Largest accepted safetensors JSON header.
        max_tensors: Most tensors (safetensors entries or ONNX initializers) in one file.
        max_params: Most scalar elements summed over all tensors.
        max_onnx_nodes: Most ONNX nodes, counting subgraphs and local functions.
    """

    max_file_bytes: int = 2 * GIB
    max_header_bytes: int = 100 * MIB
    max_tensors: int = 100_000
    max_params: int = 2_000_000_000
    max_onnx_nodes: int = 100_000

    def __post_init__(self) -> None:
        """Refuse non-positive bounds, which would reject every file with a confusing message."""
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ModelLimits.{name} must be a positive int, got {value!r}", param=name)


DEFAULT_LIMITS = ModelLimits()
