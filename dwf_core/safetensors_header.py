"""Strict, bounded parser for safetensors headers, shared by model intake and dataset loading.

It runs before the safetensors library sees a file: duplicate JSON keys and NaN/Infinity literals are
refused, every dtype must be in the caller's allowlist, offsets must lie inside the data buffer, the
tensors must tile that buffer exactly and each shape times its itemsize must equal its byte length.
Callers decide which error class is raised (and with which code and param) through an error factory.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

# Bytes per element of every dtype any caller may allow; anything else (float8, complex, made-up
# names) is refused whatever the caller's allowlist says.
DTYPE_ITEMSIZE: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}
METADATA_KEY = "__metadata__"
MAX_NAME_CHARS = 1024
MAX_RANK = 32

# Problem codes handed to the error factory.
CORRUPT = "corrupt_file"
DTYPE_NOT_ALLOWED = "dtype_not_allowed"
TOO_LARGE = "too_large"


class HeaderErrorFactory(Protocol):
    """Builds the exception raised for a header problem.

    ``code`` is one of ``corrupt_file``, ``dtype_not_allowed`` or ``too_large``; ``tensor`` names the
    tensor at fault when the problem is in one tensor's entry, else None.
    """

    def __call__(self, message: str, *, code: str, tensor: str | None) -> Exception: ...


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


class _Problem(Exception):
    """Internal carrier of a header problem, turned into the caller's error at the entry point."""

    def __init__(self, message: str, code: str = CORRUPT, tensor: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.tensor = tensor


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook refusing duplicate keys, which would let two readers see different tensors."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Problem(f"safetensors header repeats the key {key!r}")
        out[key] = value
    return out


def _no_constants(token: str) -> Any:
    """JSON hook refusing NaN/Infinity literals, which are not valid JSON."""
    raise _Problem(f"safetensors header contains the non-JSON literal {token}")


def _is_int(value: Any) -> bool:
    """Return True for a JSON integer (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entry(name: str, raw: Any, buffer_bytes: int, allowed: Collection[str]) -> TensorEntry:
    """Validate one tensor's header entry against the allowlist and the data buffer size."""
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise _Problem(f"tensor {name!r}: expected {{dtype, shape, data_offsets}}, got {raw!r:.200}", tensor=name)
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str) or dtype not in allowed:
        names = ", ".join(d for d in DTYPE_ITEMSIZE if d in allowed)
        raise _Problem(f"tensor {name!r} has dtype {dtype!r:.40}; allowed: {names}", DTYPE_NOT_ALLOWED, name)
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_int(d) and d >= 0 for d in shape):
        raise _Problem(f"tensor {name!r}: shape must be a list of at most {MAX_RANK} non-negative ints", tensor=name)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise _Problem(f"tensor {name!r}: data_offsets must be [begin, end] ints, got {offsets!r:.100}", tensor=name)
    begin, end = offsets
    if not 0 <= begin <= end <= buffer_bytes:
        raise _Problem(
            f"tensor {name!r}: data_offsets [{begin}, {end}] fall outside the {buffer_bytes}-byte data buffer",
            tensor=name,
        )
    expected = math.prod(shape) * DTYPE_ITEMSIZE[dtype]
    if expected != end - begin:
        raise _Problem(
            f"tensor {name!r}: shape {shape} of {dtype} needs {expected} bytes, data_offsets span {end - begin}",
            tensor=name,
        )
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_layout(entries: list[TensorEntry], buffer_bytes: int) -> None:
    """Require tensors to tile the data buffer exactly: contiguous, non-overlapping, no trailing bytes."""
    pos = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin < pos:
            raise _Problem(f"tensor {entry.name!r} overlaps the previous tensor (starts at {entry.begin} < {pos})")
        if entry.begin > pos:
            raise _Problem(f"{entry.begin - pos} unaccounted bytes before tensor {entry.name!r} at offset {pos}")
        pos = entry.end
    if pos != buffer_bytes:
        raise _Problem(f"data buffer is {buffer_bytes} bytes but the tensors cover {pos}")


def _parse(
    f: BinaryIO,
    size: int,
    allowed: Collection[str],
    max_header_bytes: int,
    max_tensors: int | None,
    max_elements: int | None,
) -> SafetensorsHeader:
    """Body of parse_safetensors_header, raising _Problem."""
    prefix = f.read(8)
    if len(prefix) < 8:
        raise _Problem(f"file is {size} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > max_header_bytes:
        raise _Problem(f"header length field says {header_len} bytes, limit is {max_header_bytes}", TOO_LARGE)
    if header_len > size - 8:
        raise _Problem(f"header length field says {header_len} bytes but only {size - 8} follow it")
    raw_header = f.read(header_len)
    if len(raw_header) != header_len:
        raise _Problem(f"header length field says {header_len} bytes but only {len(raw_header)} could be read")
    try:
        header = json.loads(raw_header.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Problem(f"safetensors header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _Problem(f"safetensors header must be a JSON object, got {type(header).__name__}")

    metadata = header.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _Problem("__metadata__ must map strings to strings")
    if max_tensors is not None and len(header) > max_tensors:
        raise _Problem(f"file declares {len(header)} tensors, limit is {max_tensors}", TOO_LARGE)

    buffer_bytes = size - 8 - header_len
    entries = []
    for name, raw in header.items():
        if not name or len(name) > MAX_NAME_CHARS:
            raise _Problem(f"tensor name {name[:80]!r} is empty or longer than {MAX_NAME_CHARS} characters")
        entries.append(_parse_entry(name, raw, buffer_bytes, allowed))
    _check_layout(entries, buffer_bytes)
    total = sum(e.numel for e in entries)
    if max_elements is not None and total > max_elements:
        raise _Problem(f"file holds {total} elements, limit is {max_elements}", TOO_LARGE)
    return SafetensorsHeader(header_bytes=header_len, tensors={e.name: e for e in entries}, metadata=metadata)


def parse_safetensors_header(
    f: BinaryIO,
    size: int,
    *,
    error: HeaderErrorFactory,
    allowed_dtypes: Collection[str],
    max_header_bytes: int,
    max_tensors: int | None = None,
    max_elements: int | None = None,
) -> SafetensorsHeader:
    """Parse and validate a safetensors header without reading tensor data.

    Args:
        f: The file, opened in binary mode and positioned at its start.
        size: The file's size in bytes (the caller has already checked it against its own limit).
        error: Builds the exception raised for each problem (see HeaderErrorFactory).
        allowed_dtypes: The dtypes accepted; a subset of DTYPE_ITEMSIZE's keys.
        max_header_bytes: Largest accepted JSON header.
        max_tensors: Most tensors the header may declare (None: no bound).
        max_elements: Most scalar elements summed over all tensors (None: no bound).

    Returns:
        The validated header: every tensor's dtype, shape and byte range, plus string metadata.

    Raises:
        Whatever ``error`` returns, built with code ``too_large`` if a bound is exceeded,
        ``dtype_not_allowed`` for a dtype outside ``allowed_dtypes`` and ``corrupt_file`` for anything
        malformed (bad length, JSON, offsets, layout). OSError from reading ``f`` propagates.
        ValueError if ``allowed_dtypes`` names a dtype without a known itemsize (a programming error).
    """
    unknown = set(allowed_dtypes) - DTYPE_ITEMSIZE.keys()
    if unknown:
        raise ValueError(f"allowed_dtypes has dtypes without a known itemsize: {sorted(unknown)}")
    try:
        return _parse(f, size, allowed_dtypes, max_header_bytes, max_tensors, max_elements)
    except _Problem as problem:
        raise error(problem.message, code=problem.code, tensor=problem.tensor) from problem.__cause__
