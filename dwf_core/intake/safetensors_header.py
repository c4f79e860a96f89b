"""Strict, bounded parser for the safetensors header, run before the safetensors library sees a file."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dwf_core.errors import WeightsError
from dwf_core.intake.limits import DEFAULT_LIMITS, ModelLimits

# Bytes per element of every dtype we accept; anything else (float8, complex, unsigned wide ints,
# made-up names) is refused before the safetensors library or torch is asked about it.
DTYPE_ITEMSIZE: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
METADATA_KEY = "__metadata__"
_MAX_NAME_CHARS = 1024
_MAX_RANK = 32


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as declared by the header: dtype, shape and byte range within the data buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        """Number of elements declared by the shape."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header."""

    header_bytes: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]


def _bad(message: str, code: str = "corrupt_file", param: str = "weights") -> WeightsError:
    """Build the WeightsError raised for a malformed header."""
    return WeightsError(message, code=code, param=param)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook refusing duplicate keys, which would let two readers see different tensors."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _bad(f"safetensors header repeats the key {key!r}")
        out[key] = value
    return out


def _no_constants(token: str) -> Any:
    """JSON hook refusing NaN/Infinity literals, which are not valid JSON."""
    raise _bad(f"safetensors header contains the non-JSON literal {token}")


def _is_int(value: Any) -> bool:
    """Return True for a JSON integer (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entry(name: str, raw: Any, buffer_bytes: int) -> TensorEntry:
    """Validate one tensor's header entry against the allowlist and the data buffer size."""
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise _bad(f"tensor {name!r}: expected {{dtype, shape, data_offsets}}, got {raw!r:.200}", param=name)
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_ITEMSIZE:
        raise _bad(
            f"tensor {name!r} has dtype {dtype!r:.40}; allowed: {', '.join(DTYPE_ITEMSIZE)}",
            code="dtype_not_allowed",
            param=name,
        )
    if not isinstance(shape, list) or len(shape) > _MAX_RANK or not all(_is_int(d) and d >= 0 for d in shape):
        raise _bad(f"tensor {name!r}: shape must be a list of at most {_MAX_RANK} non-negative ints", param=name)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise _bad(f"tensor {name!r}: data_offsets must be [begin, end] ints, got {offsets!r:.100}", param=name)
    begin, end = offsets
    if not 0 <= begin <= end <= buffer_bytes:
        raise _bad(
            f"tensor {name!r}: data_offsets [{begin}, {end}] fall outside the {buffer_bytes}-byte data buffer",
            param=name,
        )
    expected = math.prod(shape) * DTYPE_ITEMSIZE[dtype]
    if expected != end - begin:
        raise _bad(
            f"tensor {name!r}: shape {shape} of {dtype} needs {expected} bytes, data_offsets span {end - begin}",
            param=name,
        )
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_layout(entries: list[TensorEntry], buffer_bytes: int) -> None:
    """Require tensors to tile the data buffer exactly: contiguous, non-overlapping, no trailing bytes."""
    pos = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin < pos:
            raise _bad(f"tensor {entry.name!r} overlaps the previous tensor (starts at {entry.begin} < {pos})")
        if entry.begin > pos:
            raise _bad(f"{entry.begin - pos} unaccounted bytes before tensor {entry.name!r} at offset {pos}")
        pos = entry.end
    if pos != buffer_bytes:
        raise _bad(f"data buffer is {buffer_bytes} bytes but the tensors cover {pos}")


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
                raise _bad(f"file is {size} bytes, limit is {limits.max_file_bytes}", code="too_large")
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _bad(f"file is {size} bytes, too short for a safetensors header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > limits.max_header_bytes:
                raise _bad(
                    f"header length field says {header_len} bytes, limit is {limits.max_header_bytes}",
                    code="too_large",
                )
            if header_len > size - 8:
                raise _bad(f"header length field says {header_len} bytes but only {size - 8} follow it")
            raw_header = f.read(header_len)
    except OSError as exc:
        raise WeightsError(f"cannot read {p.name!r}: {exc.strerror}", code="not_found", param="path") from exc
    try:
        header = json.loads(raw_header.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except WeightsError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"safetensors header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _bad(f"safetensors header must be a JSON object, got {type(header).__name__}")

    metadata = header.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad("__metadata__ must map strings to strings")
    if len(header) > limits.max_tensors:
        raise _bad(f"file declares {len(header)} tensors, limit is {limits.max_tensors}", code="too_large")

    buffer_bytes = size - 8 - header_len
    entries = []
    for name, raw in header.items():
        if not name or len(name) > _MAX_NAME_CHARS:
            raise _bad(f"tensor name {name[:80]!r} is empty or longer than {_MAX_NAME_CHARS} characters")
        entries.append(_parse_entry(name, raw, buffer_bytes))
    _check_layout(entries, buffer_bytes)
    total = sum(e.numel for e in entries)
    if total > limits.max_params:
        raise _bad(f"file holds {total} elements, limit is {limits.max_params}", code="too_large")
    return SafetensorsHeader(header_bytes=header_len, tensors={e.name: e for e in entries}, metadata=metadata)
