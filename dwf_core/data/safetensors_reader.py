"""Reader for .safetensors files holding the same split arrays as the .npz format."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from dwf_core.data.common import ByteBudget, DataLimits, RawDataset, check_counts
from dwf_core.data.npz import OPTIONAL, REQUIRED, check_split_names
from dwf_core.data.safety import check_file_size
from dwf_core.errors import DatasetError
from dwf_core.safetensors_header import DTYPE_NOT_ALLOWED, HeaderErrorFactory, TensorEntry, parse_safetensors_header

# Dtypes a dataset array may use (wider than model weights: unsigned 16/32/64-bit ints are fine here);
# anything else (e.g. F8 variants, complex) is refused.
DATASET_DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "F16", "BF16", "U32", "I32", "F32", "U64", "I64", "F64"})
# Real dataset headers are a few hundred bytes; a huge one is a parsing attack, not a dataset.
MAX_HEADER_BYTES = 16 * 1024 * 1024


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """True when the first bytes are a plausible header length followed by a JSON object."""
    if len(head) < 9 or size < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _header_error(name: str) -> HeaderErrorFactory:
    """Error factory for the header of file `name`: bad_dtype names the tensor, all else is corrupt_file.

    An over-long header (the parser's too_large) stays corrupt_file, as datasets always reported it.
    """

    def make(message: str, *, code: str, tensor: str | None) -> DatasetError:
        if code == DTYPE_NOT_ALLOWED:
            return DatasetError(f"{name}: {message}", code="bad_dtype", param=tensor)
        return DatasetError(f"{name}: invalid safetensors header: {message}", code="corrupt_file", param=name)

    return make


def parse_header(path: Path, limits: DataLimits) -> dict[str, TensorEntry]:
    """Parse and check a safetensors header ourselves before handing the file to the library."""
    size = check_file_size(path, limits)
    with path.open("rb") as f:
        header = parse_safetensors_header(
            f, size, error=_header_error(path.name), allowed_dtypes=DATASET_DTYPES, max_header_bytes=MAX_HEADER_BYTES
        )
    return header.tensors


def read_safetensors(path: Path, limits: DataLimits, budget: ByteBudget) -> RawDataset:
    """Read the split arrays of a .safetensors file after validating its header."""
    entries = parse_header(path, limits)
    check_split_names(entries, path.name, "tensor")
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
