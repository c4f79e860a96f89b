"""Validation carving, normalization modes and content-based format detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dwf_core.data import detect_format, load_dataset

from .builders import (
    grey_image,
    png_bytes,
    split_arrays,
    write_cifar,
    write_idx_dir,
    write_npz,
    write_safetensors,
    write_zip,
)


def _indexed_npz(tmp_path: Path, n: int = 100) -> Path:
    """An npz whose train sample i holds the value i, so carved samples can be traced back."""
    arrays: dict[str, np.ndarray] = {
        "x_train": np.arange(n, dtype=np.float32).reshape(n, 1),
        "y_train": np.arange(n) % 7,
        "x_test": np.zeros((3, 1), np.float32),
        "y_test": np.zeros(3, np.int64),
    }
    return write_npz(tmp_path / "ids.npz", arrays)


def _ids(x: torch.Tensor) -> list[int]:
    """Sample ids of an indexed split."""
    return [int(v) for v in x[:, 0].tolist()]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_val_carve_is_disjoint_and_deterministic(tmp_path: Path, fraction: float) -> None:
    """The val carve is disjoint from train, seeded and deterministic."""
    path = _indexed_npz(tmp_path)
    a = load_dataset(path, val_fraction=fraction, seed=3)
    b = load_dataset(path, val_fraction=fraction, seed=3)
    c = load_dataset(path, val_fraction=fraction, seed=4)
    train, val = _ids(a.train.x), _ids(a.val.x)
    assert len(val) == round(100 * fraction)
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(100))
    assert train == sorted(train) and val == sorted(val)  # original order kept within each split
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert _ids(c.val.x) != val
    # Labels travel with their samples.
    assert all(int(y) == i % 7 for i, y in zip(train, a.train.y.tolist(), strict=True))


def test_given_val_is_not_recarved(tmp_path: Path) -> None:
    """A dataset with a val split keeps it."""
    arrays = split_arrays()
    arrays["x_val"], arrays["y_val"] = arrays["x_test"][:2], arrays["y_test"][:2]
    bundle = load_dataset(write_npz(tmp_path / "v.npz", arrays), val_fraction=0.5)
    assert (len(bundle.train), len(bundle.val)) == (20, 2) and not bundle.val_from_train


def test_auto_normalization_uses_train_statistics_only(tmp_path: Path) -> None:
    """Statistics come from train only and apply to all splits."""
    arrays = split_arrays(n_train=40, shape=(2, 3, 3))
    arrays["x_test"][:] = 255  # a very different test split must not move the statistics
    path = write_npz(tmp_path / "n.npz", arrays)
    bundle = load_dataset(path, seed=1)
    raw = load_dataset(path, seed=1, normalize="none")
    assert raw.normalization is None and bundle.normalization is not None
    mean = torch.tensor(bundle.normalization["mean"]).view(1, 2, 1, 1)
    std = torch.tensor(bundle.normalization["std"]).view(1, 2, 1, 1)
    torch.testing.assert_close(bundle.test.x, ((raw.test.x - mean) / std).float())
    torch.testing.assert_close(bundle.val.x, ((raw.val.x - mean) / std).float())
    expected_mean = raw.train.x.transpose(0, 1).flatten(1).double().mean(1)
    torch.testing.assert_close(torch.tensor(bundle.normalization["mean"], dtype=torch.float64), expected_mean)


def test_standardize_float_per_feature_and_constant_feature(tmp_path: Path) -> None:
    """standardize works per feature and leaves constant features finite."""
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(5, 2, 200), np.full(200, 3.0)], axis=1).astype(np.float32)
    arrays: dict[str, np.ndarray] = {
        "x_train": x,
        "y_train": np.zeros(200, np.int64),
        "x_test": x[:5],
        "y_test": np.zeros(5, np.int64),
    }
    path = write_safetensors(tmp_path / "f.safetensors", arrays)
    assert load_dataset(path).normalization is None  # auto leaves floats alone
    bundle = load_dataset(path, normalize="standardize")
    assert bundle.normalization is not None
    assert bundle.normalization["std"][1] == 1.0  # constant feature: no division by zero
    torch.testing.assert_close(bundle.train.x[:, 0].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(bundle.train.x[:, 1], torch.zeros(len(bundle.train)))


def _write_any(tmp_path: Path, fmt: str) -> Path:
    """Write a tiny dataset of `fmt` under a name that hides its format."""
    path = tmp_path / "dataset.bin"
    if fmt == "npz":
        write_npz(path, split_arrays())
    elif fmt == "safetensors":
        write_safetensors(path, split_arrays())
    elif fmt == "idx":
        path = write_idx_dir(tmp_path / "dir", split_arrays(), gz=True)
    elif fmt in ("cifar10", "cifar100"):
        write_cifar(path, fmt, names=False)
    elif fmt == "imagefolder-zip":
        write_zip(path, {f"c{i % 2}/{i}.jpeg": png_bytes(grey_image(i), "JPEG") for i in range(12)})
    else:
        path.write_text("a\tb\tclass\n" + "".join(f"{i}\t{-i}\tk{i % 2}\n" for i in range(12)))
    return path


@pytest.mark.parametrize("fmt", ["npz", "safetensors", "idx", "cifar10", "cifar100", "imagefolder-zip", "csv"])
def test_detect_format_by_content(tmp_path: Path, fmt: str) -> None:
    """Every format is detected from content under a neutral file name."""
    path = _write_any(tmp_path, fmt)
    assert detect_format(path) == fmt
    bundle = load_dataset(path)
    assert bundle.format == fmt
    assert len(bundle.train) and len(bundle.val) and len(bundle.test)
    assert bundle.source == str(path)
