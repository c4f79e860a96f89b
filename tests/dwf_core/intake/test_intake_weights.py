"""Safetensors weight loading: the round trip works and every kind of bad file gets its own code."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model
from torch import nn

from dwf_core.errors import WeightsError
from dwf_core.intake import ModelLimits, build_model, load_weights, read_safetensors_header


def write_raw(path: Path, header: object, data: bytes, *, header_len: int | None = None) -> Path:
    """Write a hand-made safetensors file, optionally lying about the header length."""
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if header_len is None else header_len) + blob + data)
    return path


def lenet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in build_model("lenet5").state_dict().items()}


def load_code(model: nn.Module, path: Path, **kwargs: object) -> str:
    with pytest.raises(WeightsError) as err:
        load_weights(model, path, **kwargs)  # type: ignore[arg-type]
    return err.value.code


def test_round_trip(tmp_path: Path) -> None:
    state = lenet_state()
    save_file(state, tmp_path / "w.safetensors")
    model = build_model("lenet5")
    load_weights(model, tmp_path / "w.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_round_trip_with_batchnorm_buffers(tmp_path: Path) -> None:
    source = build_model("resnet18")
    save_file(source.state_dict(), tmp_path / "r.safetensors")
    target = build_model("resnet18")
    load_weights(target, tmp_path / "r.safetensors")
    assert torch.equal(target.state_dict()["bn1.running_var"], source.state_dict()["bn1.running_var"])


def test_tied_weights_saved_once(tmp_path: Path) -> None:
    def tied() -> nn.Sequential:
        first, second = nn.Linear(4, 4), nn.Linear(4, 4)
        second.weight = first.weight
        return nn.Sequential(first, second)

    save_model(tied(), str(tmp_path / "t.safetensors"))
    model = tied()
    load_weights(model, tmp_path / "t.safetensors")
    assert model[0].weight is model[1].weight


def test_missing_key(tmp_path: Path) -> None:
    state = lenet_state()
    del state["fc2.bias"]
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError) as err:
        load_weights(build_model("lenet5"), tmp_path / "w.safetensors")
    assert err.value.code == "missing_keys" and "fc2.bias" in err.value.message


def test_unexpected_key(tmp_path: Path) -> None:
    state = lenet_state()
    state["extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError) as err:
        load_weights(build_model("lenet5"), tmp_path / "w.safetensors")
    assert err.value.code == "unexpected_keys" and "extra.weight" in err.value.message


def test_missing_and_unexpected_listed_together_with_prefix_hint(tmp_path: Path) -> None:
    save_file({f"module.{k}": v for k, v in lenet_state().items()}, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError) as err:
        load_weights(build_model("lenet5"), tmp_path / "w.safetensors")
    message = err.value.message
    assert err.value.code == "missing_keys"
    assert "'conv1.weight'" in message and "'module.conv1.weight'" in message
    assert "'module.'" in message  # the hint names the prefix to strip


def test_shape_mismatch(tmp_path: Path) -> None:
    state = lenet_state()
    state["fc2.weight"] = torch.zeros(5, 500)
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError) as err:
        load_weights(build_model("lenet5"), tmp_path / "w.safetensors")
    assert err.value.code == "shape_mismatch" and err.value.param == "fc2.weight"
    assert "[5, 500]" in err.value.message and "[10, 500]" in err.value.message


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast(tmp_path: Path, dtype: torch.dtype) -> None:
    state = {k: v.to(dtype) for k, v in lenet_state().items()}
    save_file(state, tmp_path / "w.safetensors")
    model = build_model("lenet5")
    load_weights(model, tmp_path / "w.safetensors")
    weight = model.state_dict()["conv1.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, state["conv1.weight"].float())


def test_int_to_float_is_not_cast(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in build_model("resnet18").state_dict().items()}
    state["bn1.num_batches_tracked"] = torch.tensor(0.0)
    save_file(state, tmp_path / "w.safetensors")
    assert load_code(build_model("resnet18"), tmp_path / "w.safetensors") == "dtype_mismatch"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_refused(tmp_path: Path, value: float) -> None:
    state = lenet_state()
    state["conv2.weight"][0, 0, 0, 0] = value
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError) as err:
        load_weights(build_model("lenet5"), tmp_path / "w.safetensors")
    assert err.value.code == "non_finite" and err.value.param == "conv2.weight"


def test_f64_overflowing_float32_refused(tmp_path: Path) -> None:
    state = {k: v.double() for k, v in lenet_state().items()}
    state["fc1.bias"][0] = 1e300
    save_file(state, tmp_path / "w.safetensors")
    assert load_code(build_model("lenet5"), tmp_path / "w.safetensors") == "non_finite"


@pytest.mark.parametrize("dtype", ["F8_E4M3", "C64", "U64", "X99", 7])
def test_dtype_not_allowed(tmp_path: Path, dtype: object) -> None:
    path = write_raw(tmp_path / "w.safetensors", {"t": {"dtype": dtype, "shape": [2], "data_offsets": [0, 2]}}, b"\0\0")
    with pytest.raises(WeightsError) as err:
        read_safetensors_header(path)
    assert err.value.code == "dtype_not_allowed" and err.value.param == "t"


def test_header_length_beyond_file(tmp_path: Path) -> None:
    header = {"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    path = write_raw(tmp_path / "w.safetensors", header, b"\0" * 4, header_len=10_000)
    assert load_code(nn.Linear(1, 1), path) == "corrupt_file"


def test_huge_header_length(tmp_path: Path) -> None:
    header = {"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    path = write_raw(tmp_path / "w.safetensors", header, b"\0" * 4, header_len=2**62)
    assert load_code(nn.Linear(1, 1), path) == "too_large"


def test_overlapping_offsets(tmp_path: Path) -> None:
    header = {
        "weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]},
        "bias": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    }
    path = write_raw(tmp_path / "w.safetensors", header, b"\0" * 4)
    with pytest.raises(WeightsError) as err:
        load_weights(nn.Linear(1, 1), path)
    assert err.value.code == "corrupt_file" and "overlaps" in err.value.message


@pytest.mark.parametrize(
    ("header", "data", "needle"),
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8 bytes"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "unaccounted"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "cover"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 40]}}, b"\0" * 4, "outside"),
        ({"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, b"\0" * 4, "expected"),
        ([1, 2], b"", "JSON object"),
    ],
)
def test_malformed_headers(tmp_path: Path, header: object, data: bytes, needle: str) -> None:
    path = write_raw(tmp_path / "w.safetensors", header, data)
    with pytest.raises(WeightsError) as err:
        read_safetensors_header(path)
    assert err.value.code == "corrupt_file" and needle in err.value.message


def test_duplicate_keys_and_bad_json(tmp_path: Path) -> None:
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    for text in (f'{{"w": {entry}, "w": {entry}}}', '{"w": NaN}', "{not json", '{"w": [[[[[[' * 10_000):
        blob = text.encode()
        path = tmp_path / "w.safetensors"
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 4)
        with pytest.raises(WeightsError) as err:
            read_safetensors_header(path)
        assert err.value.code == "corrupt_file"


def test_limits(tmp_path: Path) -> None:
    save_file(lenet_state(), tmp_path / "w.safetensors")
    model = build_model("lenet5")
    path = tmp_path / "w.safetensors"
    assert load_code(model, path, limits=ModelLimits(max_tensors=3)) == "too_large"
    assert load_code(model, path, limits=ModelLimits(max_params=1000)) == "too_large"
    assert load_code(model, path, limits=ModelLimits(max_file_bytes=1000)) == "too_large"
    assert load_code(model, path, limits=ModelLimits(max_header_bytes=10)) == "too_large"


def test_not_safetensors(tmp_path: Path) -> None:
    torch.save(lenet_state(), tmp_path / "w.safetensors")  # content decides, not the name
    assert load_code(build_model("lenet5"), tmp_path / "w.safetensors") == "unsupported_format"
    assert load_code(build_model("lenet5"), tmp_path / "absent.safetensors") == "not_found"
