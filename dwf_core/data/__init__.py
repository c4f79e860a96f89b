"""Dataset readers: load npz, safetensors, IDX, CIFAR, image-folder zips and CSV into validated splits."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dwf_core.data.cifar import read_cifar, sniff_cifar
from dwf_core.data.common import DEFAULT_LIMITS, ByteBudget, DataLimits, DatasetBundle, RawDataset, Split
from dwf_core.data.csv_reader import looks_like_csv, read_csv
from dwf_core.data.finalize import finalize
from dwf_core.data.idx import IDX_DTYPES, find_idx_files, read_idx_dir
from dwf_core.data.imagefolder import is_image_name, read_imagefolder
from dwf_core.data.npz import is_npz, read_npz
from dwf_core.data.safetensors_reader import looks_like_safetensors, read_safetensors
from dwf_core.data.safety import GZIP_MAGIC, check_file_size, check_zip, open_zip
from dwf_core.errors import ConfigError, DatasetError

__all__ = [
    "FORMATS",
    "NORMALIZE_MODES",
    "DataLimits",
    "DatasetBundle",
    "Split",
    "detect_format",
    "load_dataset",
]

FORMATS = ("npz", "safetensors", "idx", "cifar10", "cifar100", "imagefolder-zip", "csv")
NORMALIZE_MODES = ("auto", "none", "standardize")
IDX_PREFIX = "mnist-idx:"
_SNIFF_BYTES = 64 * 1024
_NPY_MAGIC = b"\x93NUMPY"

_Reader = Callable[[Path, DataLimits, ByteBudget], RawDataset]
_READERS: dict[str, _Reader] = {
    "npz": read_npz,
    "safetensors": read_safetensors,
    "idx": read_idx_dir,
    "cifar10": lambda p, lim, b: read_cifar(p, lim, b, "cifar10"),
    "cifar100": lambda p, lim, b: read_cifar(p, lim, b, "cifar100"),
    "imagefolder-zip": read_imagefolder,
    "csv": read_csv,
}


def _unsupported(name: str, found: str) -> DatasetError:
    """The error for a file whose content matches no supported format."""
    return DatasetError(
        f"{name}: {found}; expected one of: .npz, .safetensors, mnist-idx:DIR, CIFAR-10/100 binary tarball, "
        "zip of image folders, CSV with a header",
        code="unsupported_format",
        param=name,
    )


def _resolve(spec: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """Turn a spec into a path and the format it names explicitly (mnist-idx:DIR), if any."""
    text = os.fspath(spec)
    fmt = None
    if text.startswith(IDX_PREFIX):
        text, fmt = text[len(IDX_PREFIX) :], "idx"
    path = Path(text).expanduser()
    if not path.exists():
        raise DatasetError(f"{text}: no such file or directory", code="not_found", param=os.fspath(spec))
    return path, fmt


def _detect_zip(path: Path, limits: DataLimits) -> str:
    """Classify a zip as npz or image-folder zip from its (safety-checked) member names."""
    with open_zip(path, limits) as zf:
        names = [i.filename for i in check_zip(zf, limits, path.name)]
    if is_npz(names):
        return "npz"
    if any(is_image_name(n) for n in names):
        return "imagefolder-zip"
    raise _unsupported(path.name, f"zip archive with neither .npy arrays nor images (members: {names[:5]})")


def detect_format(path: str | os.PathLike[str], *, limits: DataLimits = DEFAULT_LIMITS) -> str:
    """Return the dataset format of `path` (one of FORMATS) from its content, not its extension."""
    resolved, fmt = _resolve(path)
    name = resolved.name or str(resolved)
    if fmt is not None or resolved.is_dir():
        if len(find_idx_files(resolved)) == 0:
            raise _unsupported(name, "directory without MNIST-style IDX files")
        return "idx"
    size = check_file_size(resolved, limits)
    with resolved.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _detect_zip(resolved, limits)
    if head[:2] == GZIP_MAGIC or head[257:262] == b"ustar":
        try:
            kind = sniff_cifar(resolved, limits)
        except DatasetError as exc:
            if exc.code != "unsupported_format":
                raise
            kind = None
        if kind is None:
            raise _unsupported(name, "gzip/tar file without CIFAR members (for gzipped IDX files use mnist-idx:DIR)")
        return kind
    if looks_like_safetensors(head, size):
        return "safetensors"
    if len(head) >= 4 and head[:2] == b"\x00\x00" and head[2] in IDX_DTYPES:
        raise _unsupported(name, "a single IDX file; pass its folder as mnist-idx:DIR")
    if head.startswith(_NPY_MAGIC):
        raise _unsupported(name, "a single .npy array; save the splits together with np.savez")
    if looks_like_csv(head):
        return "csv"
    raise _unsupported(name, f"unrecognised content (first bytes {head[:8].hex() or 'none, empty file'})")


def load_dataset(
    spec: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: str = "auto",
    limits: DataLimits = DEFAULT_LIMITS,
    fmt: str | None = None,
) -> DatasetBundle:
    """Load a dataset file or folder into validated float32/int64 train, val and test splits.

    Args:
        spec: A file path (format detected from content) or ``mnist-idx:DIR`` for a folder of
            MNIST-style IDX files (a plain directory path is read the same way).
        val_fraction: Fraction of train carved out (seeded, deterministic) as validation when the
            data has no validation split; in (0, 0.5].
        seed: Seed of the torch.Generator that carves missing validation/test splits.
        normalize: ``"auto"`` standardizes per channel (train statistics) when inputs are uint8
            images, ``"standardize"`` always does, ``"none"`` never does.
        limits: Size bounds checked before and during decoding.
        fmt: Force a format from FORMATS instead of detecting it (``"mnist-idx"`` = ``"idx"``).

    Returns:
        The DatasetBundle with splits, class count, per-sample shape and what was applied.

    Raises:
        ConfigError: `val_fraction`, `normalize` or `fmt` is out of range.
        DatasetError: The data is missing, unsupported, unsafe, too large or inconsistent; its
            ``code`` says which and ``param`` names the offending file, member or array.
    """
    if isinstance(val_fraction, bool) or not 0.0 < val_fraction <= 0.5:
        raise ConfigError(f"val_fraction must be in (0, 0.5], got {val_fraction!r}", param="val_fraction")
    if normalize not in NORMALIZE_MODES:
        raise ConfigError(
            f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}", param="normalize"
        )
    if fmt == "mnist-idx":
        fmt = "idx"
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}", param="fmt")
    path, spec_fmt = _resolve(spec)
    if spec_fmt is not None and fmt is not None and fmt != spec_fmt:
        raise ConfigError(f"spec {os.fspath(spec)!r} names format {spec_fmt}, but fmt={fmt!r}", param="fmt")
    fmt = fmt or spec_fmt or detect_format(path, limits=limits)
    if fmt != "idx" and path.is_dir():
        raise DatasetError(f"{path}: is a directory; format {fmt} needs a file", code="not_found", param=str(path))
    raw = _READERS[fmt](path, limits, ByteBudget(limits.max_uncompressed_bytes))
    return finalize(
        raw, source=os.fspath(spec), val_fraction=val_fraction, seed=seed, normalize=normalize, limits=limits
    )
