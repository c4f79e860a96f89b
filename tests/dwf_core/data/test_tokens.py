"""Token datasets (.npz of input_ids/labels/attention_mask): kept int64, validated with typed errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dwf_core.data import DataLimits, load_dataset
from dwf_core.data.tokens import as_integer_inputs, max_token_id
from dwf_core.errors import ConfigError, DatasetError
from tests.token_helpers import token_arrays


def _npz(tmp_path: Path, change: Callable[[dict[str, np.ndarray]], object] | None = None, **kwargs: object) -> Path:
    arrays = token_arrays(60, 20, 8, **kwargs)  # type: ignore[arg-type]
    if change is not None:
        change(arrays)
    path = tmp_path / "tokens.npz"
    np.savez(path, **arrays)
    return path


def _fails(path: Path, code: str, param: str, **kwargs: object) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_dataset(path, **kwargs)  # type: ignore[arg-type]
    assert (info.value.code, info.value.param) == (code, param), info.value.message
    return info.value


def test_ids_and_mask_become_one_int64_tensor(tmp_path: Path) -> None:
    arrays = token_arrays(60, 20, 8)
    arrays["input_ids_test"] = arrays["input_ids_test"].astype(np.int32)
    arrays["attention_mask_test"] = arrays["attention_mask_test"].astype(bool)
    np.savez(tmp_path / "t.npz", **arrays)
    data = load_dataset(tmp_path / "t.npz", normalize="auto")
    assert data.tokens and data.normalization is None and data.input_shape == (2, 8)
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.int64 and split.x.shape[1:] == (2, 8)
    assert torch.equal(data.test.x[:, 0], torch.from_numpy(arrays["input_ids_test"]).long())
    assert torch.equal(data.test.x[:, 1], torch.from_numpy(arrays["attention_mask_test"]).long())
    assert data.num_classes == 3 and len(data.train) + len(data.val) == 60
    assert data.describe()["tokens"] is True
    assert max_token_id(data) == max(int(arrays[f"input_ids_{s}"].max()) for s in ("train", "test"))


def test_ids_without_mask_are_n_by_l(tmp_path: Path) -> None:
    data = load_dataset(_npz(tmp_path, mask=False))
    assert data.train.x.shape[1:] == (8,) and data.train.x.dtype == torch.int64 and data.input_shape == (8,)


def test_a_validation_split_is_read(tmp_path: Path) -> None:
    def add_val(a: dict[str, np.ndarray]) -> None:
        a["input_ids_val"], a["labels_val"] = a["input_ids_test"][:5], a["labels_test"][:5]
        a["attention_mask_val"] = a["attention_mask_test"][:5]

    data = load_dataset(_npz(tmp_path, add_val))
    assert not data.val_from_train and len(data.val) == 5 and len(data.train) == 60


@pytest.mark.parametrize(
    ("change", "code", "param"),
    [
        (lambda a: a["attention_mask_train"].__setitem__((3, 2), 2), "bad_attention_mask", "attention_mask_train"),
        (lambda a: a["attention_mask_test"].__setitem__(4, 0), "bad_attention_mask", "attention_mask_test"),
        (lambda a: a["input_ids_test"].__setitem__((1, 5), -3), "bad_token_ids", "input_ids_test"),
        (lambda a: a.__setitem__("input_ids_train", a["input_ids_train"] + 2**31), "bad_token_ids", "input_ids_train"),
        (
            lambda a: a.__setitem__("attention_mask_train", a["attention_mask_train"][:, :6]),
            "shape_mismatch",
            "attention_mask_train",
        ),
        (
            lambda a: a.__setitem__("input_ids_test", a["input_ids_test"][:, :6]),
            "shape_mismatch",
            "attention_mask_test",
        ),
        (lambda a: a.__setitem__("labels_train", a["labels_train"][:10]), "shape_mismatch", "labels_train"),
        (
            lambda a: a.__setitem__("input_ids_train", a["input_ids_train"].astype(np.float32)),
            "bad_dtype",
            "input_ids_train",
        ),
        (
            lambda a: a.__setitem__("attention_mask_train", a["attention_mask_train"] * 0.5),
            "bad_dtype",
            "attention_mask_train",
        ),
        (
            lambda a: a.__setitem__("input_ids_train", a["input_ids_train"].reshape(60, 2, 4)),
            "shape_mismatch",
            "input_ids_train",
        ),
        (lambda a: a.pop("attention_mask_test"), "missing_array", "attention_mask_test"),
        (lambda a: a.pop("labels_test"), "missing_array", "labels_test"),
        (lambda a: a.__setitem__("x_train", a["input_ids_train"]), "mixed_layout", "x_train"),
    ],
    ids=[
        "mask-value-2",
        "mask-all-zero-row",
        "negative-id",
        "id-beyond-2**31",
        "mask-shape",
        "ids-shape-vs-mask",
        "label-count",
        "float-ids",
        "float-mask",
        "ids-3d",
        "mask-in-one-split-only",
        "missing-labels",
        "mixed-with-x",
    ],
)
def test_bad_token_files_name_the_array(
    tmp_path: Path, change: Callable[[dict[str, np.ndarray]], object], code: str, param: str
) -> None:
    _fails(_npz(tmp_path, change), code, param)


def test_sequence_length_must_agree_across_splits(tmp_path: Path) -> None:
    def shorter(a: dict[str, np.ndarray]) -> None:
        a["input_ids_test"], a["attention_mask_test"] = a["input_ids_test"][:, :6], a["attention_mask_test"][:, :6]

    err = _fails(_npz(tmp_path, shorter), "shape_mismatch", "input_ids_test")
    assert "input_ids_train" in err.message


def test_size_limits_apply(tmp_path: Path) -> None:
    _fails(_npz(tmp_path), "too_large", "input_ids_train", limits=DataLimits(max_samples=50))
    _fails(_npz(tmp_path), "too_large", "tokens.npz", limits=DataLimits(max_uncompressed_bytes=1000))


def test_token_ids_are_never_standardized(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset(_npz(tmp_path), normalize="standardize")
    assert info.value.param == "normalize"


def test_integer_x_arrays_come_back_as_int64_for_an_integer_model(tmp_path: Path) -> None:
    arrays = token_arrays(60, 20, 8, mask=False)
    np.savez(
        tmp_path / "x.npz",
        x_train=arrays["input_ids_train"],
        y_train=arrays["labels_train"],
        x_test=arrays["input_ids_test"],
        y_test=arrays["labels_test"],
    )
    data = load_dataset(tmp_path / "x.npz")
    assert data.train.x.dtype == torch.float32 and not data.tokens  # read as features, as before
    as_integer_inputs(data, "m.onnx")
    assert data.train.x.dtype == data.val.x.dtype == data.test.x.dtype == torch.int64
    assert torch.equal(data.test.x, torch.from_numpy(arrays["input_ids_test"]))


def test_scaled_or_fractional_x_cannot_become_ids(tmp_path: Path) -> None:
    arrays = token_arrays(60, 20, 8, mask=False)
    split = {k.replace("input_ids", "x").replace("labels", "y"): v for k, v in arrays.items()}
    np.savez(tmp_path / "u8.npz", **{k: v.astype(np.uint8) if k.startswith("x") else v for k, v in split.items()})
    with pytest.raises(DatasetError) as info:  # uint8 is standardized ("auto")
        as_integer_inputs(load_dataset(tmp_path / "u8.npz"), "m.onnx")
    assert (info.value.code, info.value.param) == ("integer_input_mismatch", "x_train")
    with pytest.raises(DatasetError) as info:  # and scaled by 1/255 even without it
        as_integer_inputs(load_dataset(tmp_path / "u8.npz", normalize="none"), "m.onnx")
    assert info.value.code == "integer_input_mismatch"
