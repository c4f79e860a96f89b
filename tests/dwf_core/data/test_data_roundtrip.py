"""Every supported format reads back the values, shapes, labels and class counts it was written with."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dwf_core.data import DatasetBundle, detect_format, load_dataset

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


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    """Default tiny uint8 split arrays."""
    return split_arrays()


def _all_x(bundle: DatasetBundle) -> torch.Tensor:
    """Train and val inputs together (val is carved out of train)."""
    return torch.cat([bundle.train.x, bundle.val.x])


def _check_train(bundle: DatasetBundle, x: np.ndarray, y: np.ndarray, scale: float = 255.0) -> None:
    """Train+val equal the written train arrays, matched up by the sorted carve indices."""
    assert len(bundle.train) + len(bundle.val) == len(y)
    got = {
        tuple(row.tolist()): int(label)
        for row, label in zip(_all_x(bundle).flatten(1), torch.cat([bundle.train.y, bundle.val.y]), strict=True)
    }
    want = {
        tuple((torch.from_numpy(row.astype(np.float32)) / scale).flatten().tolist()): int(label)
        for row, label in zip(x, y, strict=True)
    }
    assert got == want


@pytest.mark.parametrize("writer", [write_npz, write_safetensors], ids=["npz", "safetensors"])
def test_array_files_uint8_round_trip(
    tmp_path: Path, writer: Callable[..., Path], arrays: dict[str, np.ndarray]
) -> None:
    """uint8 arrays come back scaled by 1/255 with labels and a 10% val carve."""
    path = writer(tmp_path / "data.bin", arrays)
    bundle = load_dataset(path, normalize="none")
    assert bundle.format == ("npz" if writer is write_npz else "safetensors")
    assert bundle.input_shape == (1, 4, 4)
    assert bundle.num_classes == 3
    assert bundle.val_from_train and not bundle.test_from_train
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (18, 2, 8)
    assert bundle.train.x.dtype == torch.float32 and bundle.train.y.dtype == torch.int64
    torch.testing.assert_close(bundle.test.x, torch.from_numpy(arrays["x_test"]).float() / 255)
    assert torch.equal(bundle.test.y, torch.from_numpy(arrays["y_test"]))
    _check_train(bundle, arrays["x_train"], arrays["y_train"])
    assert bundle.normalization is None


@pytest.mark.parametrize("writer", [write_npz, write_safetensors], ids=["npz", "safetensors"])
def test_array_files_float_kept_with_given_val(tmp_path: Path, writer: Callable[..., Path]) -> None:
    """Float arrays are kept as is and a given val split is used."""
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.normal(size=(10, 6)).astype(np.float32),
        "y_train": np.arange(10) % 4,
        "x_val": rng.normal(size=(3, 6)).astype(np.float64),
        "y_val": np.array([0.0, 1.0, 5.0]),  # whole-number float labels are accepted
        "x_test": rng.normal(size=(2, 6)).astype(np.float16),
        "y_test": np.array([1, 2], dtype=np.uint8),
    }
    bundle = load_dataset(writer(tmp_path / "f.bin", arrays))
    assert bundle.normalization is None  # auto: float inputs are left alone
    assert not bundle.val_from_train
    assert bundle.num_classes == 6
    assert bundle.input_shape == (6,)
    torch.testing.assert_close(bundle.train.x, torch.from_numpy(arrays["x_train"]))
    torch.testing.assert_close(bundle.val.x, torch.from_numpy(arrays["x_val"]).float())
    assert bundle.val.y.tolist() == [0, 1, 5]


def test_safetensors_bfloat16_widened(tmp_path: Path) -> None:
    """bfloat16 tensors are widened to float32."""
    x = torch.tensor([[0.5, -1.0], [2.0, 3.0], [1.0, 1.0]], dtype=torch.bfloat16)
    tensors = {"x_train": x, "y_train": torch.tensor([0, 1, 0]), "x_test": x[:1].clone(), "y_test": torch.tensor([1])}
    bundle = load_dataset(write_safetensors(tmp_path / "b.safetensors", tensors), fmt="safetensors")
    assert bundle.test.x.tolist() == [[0.5, -1.0]]


@pytest.mark.parametrize("spelling", ["-", "."])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_folder_round_trip(tmp_path: Path, arrays: dict[str, np.ndarray], spelling: str, gz: bool) -> None:
    """IDX folders in both spellings, plain or gzip, round trip."""
    directory = write_idx_dir(tmp_path / "mnist", arrays, spelling=spelling, gz=gz)
    bundle = load_dataset(f"mnist-idx:{directory}", normalize="none")
    assert bundle.format == "idx"
    assert bundle.input_shape == (1, 4, 4)
    assert bundle.num_classes == 3
    torch.testing.assert_close(bundle.test.x, torch.from_numpy(arrays["x_test"]).float() / 255)
    _check_train(bundle, arrays["x_train"], arrays["y_train"])
    # A plain directory path is read the same way.
    assert detect_format(directory) == "idx"


def test_idx_folder_prefers_plain_copy(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A torchvision-style raw folder holding both `x` and `x.gz` reads the plain copy."""
    directory = write_idx_dir(tmp_path / "raw", arrays)
    for plain in list(directory.iterdir()):
        (directory / f"{plain.name}.gz").write_bytes(b"\x1f\x8b broken gzip")
    bundle = load_dataset(f"mnist-idx:{directory}", normalize="none")
    torch.testing.assert_close(bundle.test.x, torch.from_numpy(arrays["x_test"]).float() / 255)


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_round_trip(tmp_path: Path, variant: str) -> None:
    """CIFAR-10/100 tarballs round trip with class names."""
    path = tmp_path / f"{variant}-binary.tar.gz"
    expected = write_cifar(path, variant)
    assert detect_format(path) == variant
    bundle = load_dataset(path, normalize="none")
    assert bundle.format == variant
    assert bundle.num_classes == (10 if variant == "cifar10" else 100)
    assert bundle.input_shape == (3, 32, 32)
    assert bundle.class_names == expected["class_names"]
    torch.testing.assert_close(bundle.test.x, torch.from_numpy(expected["x_test"]).float() / 255)
    assert bundle.test.y.tolist() == expected["y_test"].tolist()
    _check_train(bundle, expected["x_train"], expected["y_train"])


def test_cifar_auto_normalization_uses_train_statistics(tmp_path: Path) -> None:
    """Auto normalization standardizes CIFAR per channel on train."""
    path = tmp_path / "c.tar.gz"
    write_cifar(path, "cifar10", names=False)
    bundle = load_dataset(path)
    assert bundle.class_names is None
    assert bundle.normalization is not None and len(bundle.normalization["mean"]) == 3
    per_channel = bundle.train.x.transpose(0, 1).flatten(1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1, correction=0), torch.ones(3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("prefix", ["", "wrapper/"], ids=["flat", "wrapped"])
def test_image_zip_class_folders(tmp_path: Path, prefix: str) -> None:
    """Class folders, with or without a wrapping folder, map to sorted labels."""
    members = {
        f"{prefix}{cls}/{i}.png": png_bytes(grey_image(10 * c + i))
        for c, cls in enumerate(["cat", "ant", "dog"])
        for i in range(10)
    }
    members[f"{prefix}README.txt"] = b"ignored"
    path = write_zip(tmp_path / "imgs.zip", members)
    assert detect_format(path) == "imagefolder-zip"
    bundle = load_dataset(path, normalize="none")
    assert bundle.class_names == ["ant", "cat", "dog"]
    assert bundle.input_shape == (1, 4, 5)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 3, 3)
    assert bundle.test_from_train and bundle.val_from_train
    everything = torch.cat([bundle.train.x, bundle.val.x, bundle.test.x])
    labels = torch.cat([bundle.train.y, bundle.val.y, bundle.test.y])
    # Each image's top-left pixel encodes 10*class_index_in_writing_order + i.
    writing_order = {"cat": 0, "ant": 1, "dog": 2}
    for img, label in zip(everything, labels, strict=True):
        first = round(float(img[0, 0, 0]) * 255)
        assert writing_order[bundle.class_names[int(label)]] == first // 10


def test_image_zip_split_folders_and_mixed_modes(tmp_path: Path) -> None:
    """train/val/test folders are used and mixed grey/colour become RGB."""
    red = Image.new("RGB", (3, 2), (255, 0, 0))
    members = {
        "train/a/1.png": png_bytes(grey_image(0, (3, 2))),
        "train/a/2.jpg": png_bytes(grey_image(1, (3, 2)), "JPEG"),
        "train/b/1.bmp": png_bytes(red, "BMP"),
        "train/b/2.png": png_bytes(red.convert("P")),
        "val/a/1.png": png_bytes(grey_image(2, (3, 2))),
        "test/b/1.gif": png_bytes(red, "GIF"),
    }
    bundle = load_dataset(write_zip(tmp_path / "s.zip", members), normalize="none")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (4, 1, 1)
    assert not bundle.val_from_train and not bundle.test_from_train
    assert bundle.input_shape == (3, 2, 3)  # one colour image makes every image RGB
    assert bundle.test.y.tolist() == [1]
    torch.testing.assert_close(bundle.test.x[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=0.02, rtol=0)
    grey = bundle.val.x[0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_csv_int_labels_carves_val_and_test(tmp_path: Path) -> None:
    """CSV with integer labels carves 10% val and 10% test."""
    rows = "\n".join(f"{i},{i * 0.5},{i % 3}" for i in range(50))
    path = tmp_path / "t.csv"
    path.write_text(f"f1,f2,Label\n{rows}\n\n")
    assert detect_format(path) == "csv"
    bundle = load_dataset(path)
    assert bundle.format == "csv" and bundle.normalization is None
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 5, 5)
    assert bundle.input_shape == (2,) and bundle.num_classes == 3 and bundle.class_names is None
    x = torch.cat([bundle.train.x, bundle.val.x, bundle.test.x])
    y = torch.cat([bundle.train.y, bundle.val.y, bundle.test.y])
    assert sorted(x[:, 0].tolist()) == [float(i) for i in range(50)]
    assert all(int(label) == int(row[0]) % 3 for row, label in zip(x, y, strict=True))


def test_csv_string_labels_and_split_column(tmp_path: Path) -> None:
    """String labels map to sorted class names; the split column is honoured."""
    path = tmp_path / "t.csv"
    path.write_text('y;"a";Target;split\n1;2;dog;train\n3;4;cat;TRAIN\n5;6;dog;train\n7;8;emu;test\n9;10;cat;val\n')
    bundle = load_dataset(path, normalize="standardize")
    assert bundle.class_names == ["cat", "dog", "emu"]
    # `target` is the label, so `y` is an ordinary feature here.
    assert bundle.input_shape == (2,)
    assert bundle.train.y.tolist() == [1, 0, 1] and bundle.test.y.tolist() == [2] and bundle.val.y.tolist() == [0]
    assert bundle.normalization == {"mean": [3.0, 4.0], "std": pytest.approx([1.632993] * 2)}
    torch.testing.assert_close(bundle.train.x.mean(0), torch.zeros(2), atol=1e-6, rtol=0)


def test_describe_is_json(tmp_path: Path) -> None:
    """describe() is JSON-serializable and reports sizes."""
    bundle = load_dataset(write_npz(tmp_path / "d.npz", split_arrays()))
    summary = json.loads(json.dumps(bundle.describe()))
    assert summary["splits"]["train"]["samples"] == 18
    assert summary["format"] == "npz" and summary["input_shape"] == [1, 4, 4]
    assert summary["normalization"]["mean"] == bundle.normalization["mean"]  # type: ignore[index]
