"""Model intake's view of the shared safetensors header parser: weight dtypes, ModelLimits, WeightsError."""

from __future__ import annotations

import os
from pathlib import Path

from dwf_core.errors import WeightsError
from dwf_core.intake.limits import DEFAULT_LIMITS, ModelLimits
from dwf_core.safetensors_header import SafetensorsHeader, TensorEntry, parse_safetensors_header

# Dtypes a weights file may use; anything else (float8, complex, unsigned wide ints, made-up names) is
# refused before the safetensors library or torch is asked about it.
WEIGHT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"})
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})

__all__ = ["FLOAT_DTYPES", "WEIGHT_DTYPES", "SafetensorsHeader", "TensorEntry", "read_safetensors_header"]


def _weights_error(message: str, *, code: str, tensor: str | None) -> WeightsError:
    """The WeightsError for a header problem: param is the tensor at fault, else ``weights``."""
    return WeightsError(message, code=code, param=tensor or "weights")


def read_safetensors_header(path: str | os.PathLike[str], *, limits: ModelLimits = DEFAULT_LIMITS) -> SafetensorsHeader:
    """Parse and validate a safetensors header without reading tensor data.

    Args:
        path: The ``.safetensors`` file.
        limits: Bounds on file size, header size, tensor count and total elements.

    Returns:
        The validated header: every tensor's dtype, shape and byte range, plus string metadata.

    Raises:
        WeightsError: ``too_large`` if a bound is exceeded, ``dtype_not_allowed`` for a dtype outside the
            allowlist, ``corrupt_file`` for anything malformed (bad length, JSON, offsets, layout),
            ``not_found`` if the file cannot be read.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            if size > limits.max_file_bytes:
                raise _weights_error(
                    f"file is {size} bytes, limit is {limits.max_file_bytes}", code="too_large", tensor=None
                )
            return parse_safetensors_header(
                f,
                size,
                error=_weights_error,
                allowed_dtypes=WEIGHT_DTYPES,
                max_header_bytes=limits.max_header_bytes,
                max_tensors=limits.max_tensors,
                max_elements=limits.max_params,
            )
    except OSError as exc:
        raise WeightsError(f"cannot read {p.name!r}: {exc.strerror}", code="not_found", param="path") from exc
