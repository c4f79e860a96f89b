"""Reader for .npz archives: x_train, y_train, x_test, y_test and optionally x_val, y_val; or token ids.

Token ids use their own names (dwf_core.data.tokens): input_ids_<split>, labels_<split> and optionally
attention_mask_<split>, for the same splits.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Collection
from pathlib import Path

import numpy as np

from dwf_core.data.common import Array, ByteBudget, DataLimits, RawDataset, check_counts
from dwf_core.data.safety import check_zip, open_zip
from dwf_core.data.tokens import OPTIONAL as TOKEN_OPTIONAL
from dwf_core.data.tokens import REQUIRED as TOKEN_REQUIRED
from dwf_core.data.tokens import check_token_names, is_token_layout, token_inputs
from dwf_core.errors import DatasetError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("x_val", "y_val")


def check_split_names(found: Collection[str], filename: str, noun: str) -> None:
    """Require x_train, y_train, x_test, y_test, and x_val/y_val both or neither (npz and safetensors alike).

    Raises:
        DatasetError: ``missing_array`` naming the first missing array.
    """
    for key in REQUIRED:
        if key not in found:
            raise DatasetError(
                f"{filename}: no {noun} named {key!r}; found {sorted(found) or f'no {noun}s'}, expected "
                f"{', '.join(REQUIRED)} (and optionally {', '.join(OPTIONAL)})",
                code="missing_array",
                param=key,
            )
    if ("x_val" in found) != ("y_val" in found):
        missing = "y_val" if "x_val" in found else "x_val"
        raise DatasetError(
            f"{filename}: has {'x_val' if missing == 'y_val' else 'y_val'} but no {missing}; expected both or neither",
            code="missing_array",
            param=missing,
        )


def is_npz(names: list[str]) -> bool:
    """True when every member of a zip is a .npy array, as np.savez writes them."""
    files = [n for n in names if not n.endswith("/")]
    return bool(files) and all(n.endswith(".npy") for n in files)


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> tuple[tuple[int, ...], np.dtype[np.generic]]:
    """Read a member's .npy header (shape, dtype) without touching its data."""
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise DatasetError(
                    f"{key}: .npy format version {version}; expected 1.0 or 2.0",
                    code="unsupported_format",
                    param=key,
                )
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(f"{key}: unreadable .npy header ({exc})", code="corrupt_file", param=key) from exc
    return tuple(int(d) for d in shape), dtype


def _check(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, limits: DataLimits) -> int:
    """Check one member's declared shape, dtype and size from its header; return its data size."""
    shape, dtype = _header(zf, info, key)
    if dtype.hasobject:
        raise DatasetError(
            f"{key}: holds Python objects (dtype {dtype}), which would need pickle to load; expected a numeric array",
            code="pickle_refused",
            param=key,
        )
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise DatasetError(
            f"{key}: dtype {dtype} is not a plain real numeric type; expected bool, int, uint or float",
            code="bad_dtype",
            param=key,
        )
    if shape:
        check_counts(shape[0], math.prod(shape[1:]), limits, key)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > info.file_size:
        raise DatasetError(
            f"{key}: header declares shape {shape} of {dtype} ({nbytes} bytes) but the member holds only "
            f"{info.file_size} bytes",
            code="corrupt_file",
            param=key,
        )
    return nbytes


def _load(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> Array:
    """Load one checked member without pickle."""
    try:
        with zf.open(info) as f:
            arr: Array = np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(f"{key}: cannot read array data ({exc})", code="corrupt_file", param=key) from exc
    return arr


def _read_tokens(
    zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], filename: str, limits: DataLimits, budget: ByteBudget
) -> RawDataset:
    """Read a token .npz: every header checked first, then each split's ids (and mask) as one int64 x."""
    check_token_names(members, filename)
    keys = [k for k in (*TOKEN_REQUIRED, *TOKEN_OPTIONAL) if k in members]
    sizes = {key: _check(zf, members[key], key, limits) for key in keys}
    budget.check(sum(sizes.values()), filename)
    splits = [s for s in ("train", "val", "test") if f"input_ids_{s}" in members]
    raw = RawDataset(
        fmt="npz",
        x={},
        y={},
        tokens=True,
        params={f"{kind}_{s}": f"{name}_{s}" for s in splits for kind, name in (("x", "input_ids"), ("y", "labels"))},
    )
    for split in splits:
        arrays = {}
        for name in ("input_ids", "attention_mask", "labels"):
            key = f"{name}_{split}"
            if key in members:
                budget.take(sizes[key], key)
                arrays[name] = _load(zf, members[key], key)
        ids, mask = arrays["input_ids"], arrays.get("attention_mask")
        # The int64 x built below is decoded data too (twice the ids with a mask stacked on them).
        budget.take(ids.size * 8 * (1 if mask is None else 2), f"input_ids_{split}")
        raw.x[split] = token_inputs(ids, mask, split)
        raw.y[split] = arrays["labels"]
    return raw


def read_npz(path: Path, limits: DataLimits, budget: ByteBudget) -> RawDataset:
    """Read the split arrays of an .npz file, checking every header before loading any data."""
    with open_zip(path, limits) as zf:
        infos = check_zip(zf, limits, path.name)
        members = {i.filename.removesuffix(".npy"): i for i in infos if i.filename.endswith(".npy")}
        if is_token_layout(members):
            return _read_tokens(zf, members, path.name, limits, budget)
        check_split_names(members, path.name, "array")
        # Check every header first so a bad last array fails before gigabytes are loaded.
        keys = [k for k in (*REQUIRED, *OPTIONAL) if k in members]
        sizes = {key: _check(zf, members[key], key, limits) for key in keys}
        budget.check(sum(sizes.values()), path.name)
        raw = RawDataset(fmt="npz", x={}, y={})
        for key in keys:
            budget.take(sizes[key], key)
            kind, split = key.split("_", 1)
            (raw.x if kind == "x" else raw.y)[split] = _load(zf, members[key], key)
    return raw
