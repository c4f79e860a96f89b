"""The dwf-sparse file format: encode/decode a state dict with exact zeros compactly, bit for bit.

A dwf-sparse file is one ordinary safetensors file, readable by any safetensors library. For every
original tensor ``NAME`` the writer picks the encoding with the fewest data bytes (ties go to the simpler
one, in the order dense < bitmask < csr) and stores these safetensors entries:

* ``"dense"`` — ``NAME``: the tensor itself, original shape and dtype.
* ``"bitmask"`` — ``NAME::mask``: uint8, 1-D, ``ceil(numel/8)`` bytes; bit ``i`` of the row-major
  flattened tensor is bit ``i % 8`` (LSB first) of byte ``i // 8`` (``numpy.packbits(bitorder="little")``);
  padding bits after ``numel`` are 0. ``NAME::values``: 1-D, original dtype, the entries whose bit is set,
  in row-major order.
* ``"csr"`` — the tensor viewed as a 2-D matrix ``(shape[0], numel // shape[0])`` (a 1-D tensor as
  ``(1, n)``). ``NAME::indptr``: int32, ``rows + 1`` entries, starts at 0, non-decreasing, ends at nnz;
  ``NAME::indices``: column of each stored entry, uint16 when ``cols <= 65536`` else int32, strictly
  increasing within a row; ``NAME::values``: 1-D, original dtype, row-major order.

An entry is "zero" when its bit pattern is all zeros: floats are compared as the same-width integer, so
``-0.0`` and every NaN payload are stored as values and come back exactly; ints and bool use ``!= 0``.
0-D tensors and empty tensors (numel 0) are always dense. Supported dtypes: float32, float16, bfloat16,
float64, int64, int32, int16, int8, uint8, bool.

The safetensors metadata (str -> str) holds ``format = "dwf-sparse"``, ``version = "1"`` and ``tensors``,
a JSON object mapping each ``NAME`` (in the original order) to ``{"shape": [...], "dtype": "float32",
"encoding": "csr"}``; any other metadata keys are the writer's user metadata. Tensor names may not contain
``"::"``.

This module holds no file I/O: ``dwf_core.export.save_sparse`` / ``load_sparse`` read and write files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from dwf_core.errors import ExportError

FORMAT_NAME = "dwf-sparse"
FORMAT_VERSION = "1"
SEPARATOR = "::"
RESERVED_METADATA_KEYS = frozenset({"format", "version", "tensors"})
CORRUPT = "corrupt_sparse_file"

Encoding = Literal["dense", "bitmask", "csr"]
ENCODINGS: tuple[Encoding, ...] = ("dense", "bitmask", "csr")  # also the tie-break order

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

# Floats are tested and moved as same-width integers so -0.0 and NaN payloads survive bit for bit.
_BIT_VIEW: dict[torch.dtype, torch.dtype] = {
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float64: torch.int64,
}

_INT32_MAX = 2**31 - 1
_UINT16_COLS = 65536  # column indices 0..65535 fit in uint16


@dataclass
class TensorEncoding:
    """How one tensor was stored: its chosen encoding and the data bytes that encoding takes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: Encoding
    nnz: int
    numel: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The encoding as a JSON-ready dict (shape as a list)."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "encoding": self.encoding,
            "nnz": self.nnz,
            "numel": self.numel,
            "bytes": self.bytes,
        }


@dataclass
class SparseFileStats:
    """What ``save_sparse`` wrote: file size, per-tensor encodings, totals and the information bound."""

    file_bytes: int
    tensors: list[TensorEncoding] = field(default_factory=list)
    nnz: int = 0
    numel: int = 0
    bound_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The stats as a JSON-ready dict."""
        return {
            "file_bytes": self.file_bytes,
            "nnz": self.nnz,
            "numel": self.numel,
            "bound_bytes": self.bound_bytes,
            "tensors": [t.to_dict() for t in self.tensors],
        }


@dataclass(frozen=True)
class EncodedTensor:
    """The safetensors entries for one tensor plus how it was encoded."""

    entries: dict[str, torch.Tensor]
    info: TensorEncoding


def bound_bytes(nnz: int, numel: int, itemsize: int) -> int:
    """Reference size of a tensor: its non-zero values plus one bit per entry.

    Args:
        nnz: Number of non-zero entries.
        numel: Number of entries.
        itemsize: Bytes per entry of the tensor's dtype.

    Returns:
        ``nnz * itemsize + ceil(numel / 8)``.
    """
    return nnz * itemsize + (numel + 7) // 8


def _csr_dims(shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows and columns of the 2-D view CSR uses (1-D tensors are a single row)."""
    numel = math.prod(shape)
    rows = shape[0] if len(shape) >= 2 else 1
    return rows, (numel // rows if rows else 0)


def _csr_index_dtype(cols: int) -> torch.dtype:
    """uint16 column indices when every column fits, else int32."""
    return torch.uint16 if cols <= _UINT16_COLS else torch.int32


def encoding_sizes(shape: tuple[int, ...], dtype: torch.dtype, nnz: int) -> dict[Encoding, int]:
    """Exact data bytes of every encoding applicable to a tensor.

    The numbers equal the sum of ``nbytes`` of the arrays ``encode_tensor`` would write, so the choice
    can be made before building any of them.

    Args:
        shape: Tensor shape.
        dtype: Tensor dtype (one of ``DTYPES``).
        nnz: Number of entries whose bit pattern is non-zero.

    Returns:
        Bytes per applicable encoding; dense always, bitmask and csr only for tensors with ndim >= 1 and
        numel >= 1, csr only when its int32 indptr and indices can address the tensor.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = math.prod(shape)
    sizes: dict[Encoding, int] = {"dense": numel * itemsize}
    if len(shape) == 0 or numel == 0:
        return sizes
    sizes["bitmask"] = (numel + 7) // 8 + nnz * itemsize
    rows, cols = _csr_dims(shape)
    if nnz <= _INT32_MAX and cols <= _INT32_MAX:
        index_size = torch.empty((), dtype=_csr_index_dtype(cols)).element_size()
        sizes["csr"] = (rows + 1) * 4 + nnz * index_size + nnz * itemsize
    return sizes


def choose_encoding(sizes: Mapping[Encoding, int]) -> Encoding:
    """The smallest encoding; ties go to the simpler one (dense < bitmask < csr)."""
    return min(sizes, key=lambda enc: (sizes[enc], ENCODINGS.index(enc)))


def _bits(flat: torch.Tensor) -> torch.Tensor:
    """The tensor as integers of the same width (floats) or unchanged (ints, bool)."""
    view = _BIT_VIEW.get(flat.dtype)
    return flat.view(view) if view is not None else flat


def _check_name(name: str) -> None:
    """Reject names that would collide with the ``NAME::part`` keys."""
    if not isinstance(name, str) or not name or SEPARATOR in name:
        raise ExportError(
            f"tensor name {name!r} is empty or contains {SEPARATOR!r}, which dwf-sparse reserves",
            code="invalid_tensor_name",
            param=str(name),
        )


def encode_tensor(name: str, tensor: torch.Tensor) -> EncodedTensor:
    """Encode one tensor with its smallest encoding.

    Args:
        name: Tensor name in the state dict (must not contain ``"::"``).
        tensor: Any-device tensor of a supported dtype; it is copied to CPU, never modified.

    Returns:
        The safetensors entries (CPU, contiguous, unshared) and the ``TensorEncoding``.

    Raises:
        ExportError: ``invalid_tensor_name`` or ``unsupported_dtype`` (param = the name).
    """
    _check_name(name)
    if not isinstance(tensor, torch.Tensor):
        raise ExportError(
            f"state entry {name!r} is a {type(tensor).__name__}, not a tensor",
            code="unsupported_dtype",
            param=name,
        )
    if tensor.dtype not in DTYPE_NAMES:
        raise ExportError(
            f"tensor {name!r} has dtype {tensor.dtype}; dwf-sparse supports {', '.join(DTYPES)}",
            code="unsupported_dtype",
            param=name,
        )
    shape = tuple(int(s) for s in tensor.shape)
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    bits = _bits(flat)
    mask = bits != 0
    nnz = int(mask.sum().item())
    sizes = encoding_sizes(shape, tensor.dtype, nnz)
    encoding = choose_encoding(sizes)
    entries: dict[str, torch.Tensor]
    if encoding == "dense":
        # clone(): never share storage with the model (safetensors refuses shared storage).
        entries = {name: flat.reshape(shape).clone()}
    else:
        # Gather through the integer view: a plain copy of bits, no float arithmetic touches NaNs.
        values = bits[mask].view(tensor.dtype)
        if encoding == "bitmask":
            packed = np.packbits(mask.numpy(), bitorder="little")
            entries = {f"{name}::mask": torch.from_numpy(packed), f"{name}::values": values}
        else:
            rows, cols = _csr_dims(shape)
            flat_index = torch.nonzero(mask).reshape(-1)  # row-major order, matches `values`
            row = torch.div(flat_index, cols, rounding_mode="floor")
            indptr = torch.zeros(rows + 1, dtype=torch.int32)
            indptr[1:] = torch.cumsum(torch.bincount(row, minlength=rows), 0).to(torch.int32)
            indices = (flat_index - row * cols).to(_csr_index_dtype(cols))
            entries = {
                f"{name}::indptr": indptr,
                f"{name}::indices": indices,
                f"{name}::values": values,
            }
    info = TensorEncoding(
        name=name,
        shape=shape,
        dtype=DTYPE_NAMES[tensor.dtype],
        encoding=encoding,
        nnz=nnz,
        numel=flat.numel(),
        bytes=sizes[encoding],
    )
    return EncodedTensor(entries=entries, info=info)


def build_metadata(infos: list[TensorEncoding], user_metadata: Mapping[str, str] | None = None) -> dict[str, str]:
    """The safetensors metadata of a dwf-sparse file.

    Args:
        infos: Encodings of every tensor, in state-dict order.
        user_metadata: Extra str -> str entries to store alongside.

    Returns:
        ``format``, ``version``, ``tensors`` (JSON) plus the user entries.

    Raises:
        ExportError: ``invalid_metadata`` when a user key is reserved or a key/value is not a str.
    """
    meta: dict[str, str] = {}
    for key, value in (user_metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ExportError(
                f"metadata must map str to str, got {key!r}: {type(value).__name__}",
                code="invalid_metadata",
                param=str(key),
            )
        if key in RESERVED_METADATA_KEYS:
            raise ExportError(
                f"metadata key {key!r} is reserved by the dwf-sparse format",
                code="invalid_metadata",
                param=key,
            )
        meta[key] = value
    tensors = {i.name: {"shape": list(i.shape), "dtype": i.dtype, "encoding": i.encoding} for i in infos}
    meta.update(
        {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "tensors": json.dumps(tensors, separators=(",", ":")),
        }
    )
    return meta


@dataclass(frozen=True)
class TensorSpec:
    """One tensor's declared shape, dtype and encoding, as read from the metadata."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    encoding: Encoding

    def storage_keys(self) -> tuple[str, ...]:
        """The safetensors keys this encoding stores."""
        if self.encoding == "dense":
            return (self.name,)
        if self.encoding == "bitmask":
            return (f"{self.name}::mask", f"{self.name}::values")
        return (f"{self.name}::indptr", f"{self.name}::indices", f"{self.name}::values")


def _corrupt(message: str, param: str) -> ExportError:
    """The error for a malformed or tampered dwf-sparse file."""
    return ExportError(message, code=CORRUPT, param=param)


def parse_metadata(metadata: Mapping[str, str] | None) -> list[TensorSpec]:
    """Validate a dwf-sparse header and return its tensor specs in stored order.

    Args:
        metadata: The safetensors metadata dict (None when the file has none).

    Returns:
        One ``TensorSpec`` per original tensor.

    Raises:
        ExportError: ``corrupt_sparse_file`` (param = the metadata key or tensor name at fault).
    """
    if metadata is None or metadata.get("format") != FORMAT_NAME:
        raise _corrupt(f"not a {FORMAT_NAME} file (metadata 'format' missing or wrong)", "format")
    if metadata.get("version") != FORMAT_VERSION:
        raise _corrupt(
            f"unsupported {FORMAT_NAME} version {metadata.get('version')!r} (expected {FORMAT_VERSION!r})",
            "version",
        )
    try:
        table = json.loads(metadata.get("tensors", ""))
    except json.JSONDecodeError as exc:
        raise _corrupt(f"metadata 'tensors' is not valid JSON: {exc}", "tensors") from exc
    if not isinstance(table, dict):
        raise _corrupt("metadata 'tensors' must be a JSON object", "tensors")
    specs: list[TensorSpec] = []
    for name, entry in table.items():
        if not name or SEPARATOR in name:
            raise _corrupt(f"invalid tensor name {name!r}", name)
        if not isinstance(entry, dict):
            raise _corrupt(f"tensor {name!r}: entry must be an object", name)
        shape = entry.get("shape")
        dtype = entry.get("dtype")
        encoding = entry.get("encoding")
        # bool is an int subclass in Python; reject it explicitly so [true] is not a shape.
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise _corrupt(f"tensor {name!r}: shape {shape!r} is not a list of non-negative ints", name)
        if dtype not in DTYPES:
            raise _corrupt(f"tensor {name!r}: dtype {dtype!r} is not supported", name)
        if encoding not in ENCODINGS:
            raise _corrupt(f"tensor {name!r}: unknown encoding {encoding!r}", name)
        spec = TensorSpec(name=name, shape=tuple(shape), dtype=DTYPES[dtype], encoding=encoding)
        # Sparse encodings are only ever written for ndim >= 1 and numel >= 1 (see encoding_sizes).
        if encoding != "dense" and (not spec.shape or math.prod(spec.shape) == 0):
            raise _corrupt(f"tensor {name!r}: encoding {encoding!r} is invalid for shape {shape}", name)
        specs.append(spec)
    return specs


def expected_keys(specs: list[TensorSpec]) -> dict[str, str]:
    """Map every safetensors key the specs require to the tensor name that owns it."""
    return {key: spec.name for spec in specs for key in spec.storage_keys()}


def _expect(tensor: torch.Tensor, name: str, part: str, dtype: torch.dtype, length: int | None) -> None:
    """Check a stored array is 1-D, of ``dtype`` and (if given) of ``length`` entries."""
    if tensor.dtype != dtype or tensor.dim() != 1 or (length is not None and tensor.numel() != length):
        want = f"1-D {dtype}" + (f" of length {length}" if length is not None else "")
        raise _corrupt(
            f"tensor {name!r}: {part} is {tensor.dtype} with shape {tuple(tensor.shape)}, expected {want}",
            name,
        )


def decode_tensor(spec: TensorSpec, fetch: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Rebuild one dense CPU tensor from its stored entries, validating every length and index.

    Args:
        spec: The tensor's declared shape, dtype and encoding.
        fetch: Returns the stored CPU tensor for a safetensors key (all of ``spec.storage_keys()`` exist).

    Returns:
        The dense tensor, bit-identical to what was saved.

    Raises:
        ExportError: ``corrupt_sparse_file`` (param = the tensor name) on any inconsistency.
    """
    name, shape, dtype = spec.name, spec.shape, spec.dtype
    numel = math.prod(shape)
    if spec.encoding == "dense":
        dense = fetch(name)
        if dense.dtype != dtype or tuple(dense.shape) != shape:
            raise _corrupt(
                f"tensor {name!r}: stored {dense.dtype} {tuple(dense.shape)}, declared {dtype} {shape}", name
            )
        return dense
    values = fetch(f"{name}::values")
    _expect(values, name, "values", dtype, None)
    nnz = values.numel()
    bit_dtype = _BIT_VIEW.get(dtype, dtype)
    # The output (numel entries) is only allocated once the stored arrays have been validated.
    if spec.encoding == "bitmask":
        mask = fetch(f"{name}::mask")
        _expect(mask, name, "mask", torch.uint8, (numel + 7) // 8)
        bits = np.unpackbits(mask.numpy(), bitorder="little")
        if bits[numel:].any():
            raise _corrupt(f"tensor {name!r}: mask has bits set past numel={numel}", name)
        where = torch.from_numpy(bits[:numel].view(np.bool_))  # unpackbits yields 0/1: a free view
        popcount = int(where.sum().item())
        if popcount != nnz:
            raise _corrupt(f"tensor {name!r}: mask has {popcount} bits set but {nnz} values stored", name)
        out = torch.zeros(numel, dtype=bit_dtype)  # all-zero bits: +0.0, 0 or False
        out[where] = _bits(values)
        return out.view(dtype).reshape(shape)
    rows, cols = _csr_dims(shape)
    if cols > _INT32_MAX or nnz > _INT32_MAX:
        raise _corrupt(f"tensor {name!r}: csr cannot address {cols} columns / {nnz} values", name)
    indptr = fetch(f"{name}::indptr")
    _expect(indptr, name, "indptr", torch.int32, rows + 1)
    indices = fetch(f"{name}::indices")
    _expect(indices, name, "indices", _csr_index_dtype(cols), nnz)
    indptr64 = indptr.to(torch.int64)
    counts = indptr64[1:] - indptr64[:-1]
    if int(indptr64[0]) != 0 or int(indptr64[-1]) != nnz or bool((counts < 0).any()):
        raise _corrupt(f"tensor {name!r}: indptr must start at 0, never decrease and end at nnz={nnz}", name)
    col = indices.to(torch.int64)
    if nnz and (int(col.min()) < 0 or int(col.max()) >= cols):
        raise _corrupt(f"tensor {name!r}: a column index is outside [0, {cols})", name)
    row = torch.repeat_interleave(torch.arange(rows, dtype=torch.int64), counts)
    # Strictly increasing columns within a row rule out duplicates, which would silently drop values.
    if nnz > 1 and not bool(((row[1:] != row[:-1]) | (col[1:] > col[:-1])).all()):
        raise _corrupt(f"tensor {name!r}: column indices are not strictly increasing within a row", name)
    out = torch.zeros(numel, dtype=bit_dtype)
    out[row * cols + col] = _bits(values)
    return out.view(dtype).reshape(shape)
