"""Reader for .safetensors files holding the same split arrays as the .npz format."""

from __future__ import annotations

import itertools
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from dwf_core.data.common import ByteBudget, DataLimits, RawDataset, check_counts
from dwf_core.data.npz import OPTIONAL, REQUIRED
from dwf_core.data.safety import check_file_size
from dwf_core.errors import DatasetError

# Element sizes of the dtypes a dataset array may use; anything else (e.g. F8 variants) is refused.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}
# Real dataset headers are a few hundred bytes; a huge one is a parsing attack, not a dataset.
MAX_HEADER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's header entry: dtype, shape and byte range within the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """True when the first bytes are a plausible header length followed by a JSON object."""
    if len(head) < 9 or size < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _bad(name: str, what: str) -> DatasetError:
    """A corrupt_file error for the safetensors header of `name`."""
    return DatasetError(f"{name}: invalid safetensors header: {what}", code="corrupt_file", param=name)


def _entry(key: str, value: Any, data_len: int, name: str) -> TensorEntry:
    """Validate one header entry against the dtype allowlist and the data section's length."""
    if not isinstance(value, dict):
        raise _bad(name, f"entry {key!r} is {type(value).__name__}; expected an object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise DatasetError(
            f"{name}: tensor {key!r} has dtype {dtype!r}; expected one of {', '.join(DTYPE_SIZES)}",
            code="bad_dtype",
            param=key,
        )
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise _bad(name, f"tensor {key!r} has shape {shape!r}; expected a list of non-negative ints")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise _bad(
            name,
            f"tensor {key!r} has data_offsets {offsets!r}; expected [begin, end] within {data_len} bytes",
        )
    want = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != want:
        raise _bad(
            name,
            f"tensor {key!r} spans {offsets[1] - offsets[0]} bytes; shape {shape} of {dtype} needs {want}",
        )
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def parse_header(path: Path, limits: DataLimits) -> dict[str, TensorEntry]:
    """Parse and check a safetensors header ourselves before handing the file to the library."""
    name = path.name
    size = check_file_size(path, limits)
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _bad(name, f"file is {size} bytes; expected at least an 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise _bad(name, f"declared header length {n} exceeds the {size - 8} bytes after the length field")
        text = f.read(n)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(name, f"header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _bad(name, f"header is {type(header).__name__}; expected a JSON object")
    data_len = size - 8 - n
    entries = {key: _entry(key, value, data_len, name) for key, value in header.items() if key != "__metadata__"}
    spans = sorted((e.begin, e.end, key) for key, e in entries.items() if e.end > e.begin)
    for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
        if begin < end:
            raise _bad(name, f"tensors {first!r} and {second!r} overlap")
    return entries


def read_safetensors(path: Path, limits: DataLimits, budget: ByteBudget) -> RawDataset:
    """Read the split arrays of a .safetensors file after validating its header."""
    entries = parse_header(path, limits)
    for key in REQUIRED:
        if key not in entries:
            raise DatasetError(
                f"{path.name}: no tensor named {key!r}; found {sorted(entries) or 'no tensors'}, expected "
                f"{', '.join(REQUIRED)} (and optionally {', '.join(OPTIONAL)})",
                code="missing_array",
                param=key,
            )
    if ("x_val" in entries) != ("y_val" in entries):
        missing = "y_val" if "x_val" in entries else "x_val"
        raise DatasetError(
            f"{path.name}: has only one of x_val/y_val, missing {missing}; expected both or neither",
            code="missing_array",
            param=missing,
        )
    keys = [k for k in (*REQUIRED, *OPTIONAL) if k in entries]
    for key in keys:
        shape = entries[key].shape
        if shape:
            check_counts(shape[0], math.prod(shape[1:]), limits, key)
    budget.check(sum(entries[k].end - entries[k].begin for k in keys), path.name)
    raw = RawDataset(fmt="safetensors", x={}, y={})
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in keys:
                budget.take(entries[key].end - entries[key].begin, key)
                tensor: torch.Tensor = f.get_tensor(key)
                # numpy has no bfloat16; widen it (exactly) to float32.
                if tensor.dtype == torch.bfloat16:
                    tensor = tensor.to(torch.float32)
                kind, split = key.split("_", 1)
                (raw.x if kind == "x" else raw.y)[split] = tensor.numpy()
    except SafetensorError as exc:
        raise DatasetError(f"{path.name}: cannot read tensors ({exc})", code="corrupt_file", param=path.name) from exc
    return raw
