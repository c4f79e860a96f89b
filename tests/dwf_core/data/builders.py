"""Builders for tiny synthetic dataset files used by the data reader tests (imported, not collected)."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C}


def split_arrays(
    n_train: int = 20, n_test: int = 8, shape: tuple[int, ...] = (1, 4, 4), classes: int = 3, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random uint8 inputs and labels for train and test."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": (np.arange(n_train) % classes).astype(np.int64),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": (np.arange(n_test) % classes).astype(np.int64),
    }


def write_npz(path: Path, arrays: Mapping[str, np.ndarray], *, allow_pickle: bool = False) -> Path:
    """Write arrays as an .npz archive."""
    with path.open("wb") as f:  # a file object keeps the name as given (np.savez would add .npz)
        np.savez(f, allow_pickle=allow_pickle, **arrays)
    return path


def write_safetensors(path: Path, arrays: Mapping[str, np.ndarray | torch.Tensor]) -> Path:
    """Write arrays as a .safetensors file."""
    save_file(
        {k: torch.tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}, str(path)
    )
    return path


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode an array in the IDX format (big-endian header and data)."""
    dtype = arr.dtype.newbyteorder(">") if arr.dtype.itemsize > 1 else arr.dtype
    head = bytes([0, 0, IDX_CODES[dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(dtype).tobytes()


def write_idx_dir(directory: Path, arrays: Mapping[str, np.ndarray], *, spelling: str = "-", gz: bool = False) -> Path:
    """Write train/t10k images/labels IDX files with the given name spelling ("-" or ".")."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        f"train-images{spelling}idx3-ubyte": arrays["x_train"][:, 0],
        f"train-labels{spelling}idx1-ubyte": arrays["y_train"].astype(np.uint8),
        f"t10k-images{spelling}idx3-ubyte": arrays["x_test"][:, 0],
        f"t10k-labels{spelling}idx1-ubyte": arrays["y_test"].astype(np.uint8),
    }
    for name, arr in files.items():
        data = idx_bytes(arr)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (directory / name).write_bytes(data)
    return directory


def tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add an in-memory regular file to a tar."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def cifar_records(n: int, label_bytes: int, classes: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Random CIFAR records; returns (bytes, images (n,3,32,32), fine labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    labels = rng.integers(0, classes, (n, label_bytes), dtype=np.uint8)
    return np.concatenate([labels, images], axis=1).tobytes(), images.reshape(n, 3, 32, 32), labels[:, -1]


def write_cifar(
    path: Path, variant: str, *, names: bool = True, extra: Mapping[str, bytes] | None = None
) -> dict[str, Any]:
    """Write a tiny CIFAR-10 (2 train batches) or CIFAR-100 binary tarball; returns the expected arrays."""
    expected: dict[str, Any] = {}
    with tarfile.open(path, "w:gz") as tar:
        if variant == "cifar10":
            top = "cifar-10-batches-bin"
            parts = [cifar_records(6, 1, 10, seed) for seed in (1, 2)]
            for i, (data, _, _) in enumerate(parts, start=1):
                tar_add(tar, f"{top}/data_batch_{i}.bin", data)
            test = cifar_records(4, 1, 10, 3)
            tar_add(tar, f"{top}/test_batch.bin", test[0])
            if names:
                expected["class_names"] = [f"c{i}" for i in range(10)]
                tar_add(tar, f"{top}/batches.meta.txt", ("\n".join(expected["class_names"]) + "\n\n").encode())
        else:
            top = "cifar-100-binary"
            parts = [cifar_records(10, 2, 100, 1)]
            tar_add(tar, f"{top}/train.bin", parts[0][0])
            test = cifar_records(4, 2, 100, 3)
            tar_add(tar, f"{top}/test.bin", test[0])
            if names:
                expected["class_names"] = [f"fine{i}" for i in range(100)]
                tar_add(tar, f"{top}/fine_label_names.txt", "\n".join(expected["class_names"]).encode())
                tar_add(tar, f"{top}/coarse_label_names.txt", "\n".join(f"k{i}" for i in range(20)).encode())
        for name, data in (extra or {}).items():
            tar_add(tar, name, data)
    expected["x_train"] = np.concatenate([p[1] for p in parts])
    expected["y_train"] = np.concatenate([p[2] for p in parts])
    expected["x_test"], expected["y_test"] = test[1], test[2]
    return expected


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    """Encode a Pillow image."""
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def grey_image(value: int, size: tuple[int, int] = (5, 4)) -> Image.Image:
    """A small greyscale image with a gradient offset by `value`."""
    arr = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) + value).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def write_zip(path: Path, members: Mapping[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> Path:
    """Write a zip with the given member names and contents (names used verbatim)."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path
