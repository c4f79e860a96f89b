"""Reader for MNIST-style IDX folders (MNIST, Fashion-MNIST, Kuzushiji-MNIST), plain or gzip."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np

from dwf_core.data.common import Array, ByteBudget, DataLimits, RawDataset, check_counts
from dwf_core.data.safety import open_stream
from dwf_core.errors import DatasetError

# IDX type byte -> element dtype; IDX stores multi-byte values big-endian.
IDX_DTYPES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Both spellings occur in the wild: `train-images-idx3-ubyte` (LeCun) and `train-images.idx3-ubyte`.
_NAME = re.compile(r"^(train|t10k)-(images|labels)[-.]idx\d-ubyte(\.gz)?$", re.IGNORECASE)
_ROLES = {("train", "images"), ("train", "labels"), ("t10k", "images"), ("t10k", "labels")}


def find_idx_files(directory: Path) -> dict[tuple[str, str], Path]:
    """Map (train|t10k, images|labels) to the file holding it, preferring uncompressed copies."""
    found: dict[tuple[str, str], Path] = {}
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise DatasetError(
            f"{directory}: cannot list directory ({exc})", code="not_found", param=str(directory)
        ) from exc
    for entry in entries:
        m = _NAME.match(entry.name)
        if not m or not entry.is_file():
            continue
        role = (m.group(1).lower(), m.group(2).lower())
        # torchvision's raw folders hold both `x` and `x.gz`; the plain copy is cheaper to read.
        if role not in found or (found[role].suffix == ".gz" and not m.group(3)):
            found[role] = entry
    return found


def read_idx(path: Path, limits: DataLimits, budget: ByteBudget) -> Array:
    """Parse one IDX file (magic 00 00 <type> <ndim>, big-endian uint32 dims, then the data)."""
    name = path.name
    with open_stream(path, limits, budget) as stream:
        head = bytes(stream.read_exact(4, "IDX header"))
        if head[:2] != b"\x00\x00" or head[2] not in IDX_DTYPES:
            raise DatasetError(
                f"{name}: magic bytes {head.hex()} are not an IDX header; expected 0000 followed by a type "
                "byte in 08/09/0B/0C/0D/0E and a dimension count",
                code="bad_magic",
                param=name,
            )
        ndim = head[3]
        if ndim == 0:
            raise DatasetError(
                f"{name}: IDX header declares 0 dimensions; expected >= 1", code="corrupt_file", param=name
            )
        dims = struct.unpack(f">{ndim}I", bytes(stream.read_exact(4 * ndim, "IDX dimensions")))
        dtype = IDX_DTYPES[head[2]]
        check_counts(dims[0], math.prod(dims[1:]), limits, name)
        nbytes = math.prod(dims) * dtype.itemsize
        budget.check(nbytes, name)
        data = stream.read_exact(nbytes, f"IDX data (header declares dims {dims} = {nbytes} bytes)")
        if stream.read(1):
            raise DatasetError(
                f"{name}: data continues past the {nbytes} bytes declared by dims {dims}; expected the "
                "file to end there",
                code="corrupt_file",
                param=name,
            )
    arr = np.frombuffer(data, dtype=dtype).reshape(dims)
    return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


def read_idx_dir(directory: Path, limits: DataLimits, budget: ByteBudget) -> RawDataset:
    """Read the four IDX files of an MNIST-style folder into train and test splits."""
    if not directory.is_dir():
        raise DatasetError(
            f"{directory}: not a directory; expected a folder of MNIST-style IDX files",
            code="not_found",
            param=str(directory),
        )
    files = find_idx_files(directory)
    missing = sorted(_ROLES - files.keys())
    if missing:
        prefix, kind = missing[0]
        expected = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        raise DatasetError(
            f"{directory}: no {expected} file (plain or .gz, '-idx' or '.idx' spelling); found "
            f"{sorted(p.name for p in files.values()) or 'no IDX files'}",
            code="missing_file",
            param=expected,
        )
    raw = RawDataset(fmt="idx", x={}, y={})
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images_path, labels_path = files[(prefix, "images")], files[(prefix, "labels")]
        images = read_idx(images_path, limits, budget)
        labels = read_idx(labels_path, limits, budget)
        # Grey-scale (N, H, W) images get a channel axis so every image format is (N, C, H, W).
        raw.x[split] = images[:, None] if images.ndim == 3 else images
        raw.y[split] = labels
        raw.params[f"x_{split}"] = images_path.name
        raw.params[f"y_{split}"] = labels_path.name
    return raw
