"""Format detection and refusal of code-carrying formats, without ever deserialising them."""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dwf_core.errors import DwfError, ModelError, WeightsError
from dwf_core.intake import detect_model_format, load_onnx, load_weights, refuse_unsafe


class _NoUnpickler(pickle.Unpickler):
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a user file was unpickled")


@contextlib.contextmanager
def no_deserialisation() -> Iterator[None]:
    """Make every code-running loader fail loudly, so a refusal cannot have loaded the file first."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a user file was deserialised")

    with pytest.MonkeyPatch.context() as mp:
        for target, name in [(pickle, "load"), (pickle, "loads"), (torch, "load"), (torch.jit, "load")]:
            mp.setattr(target, name, forbidden)
        mp.setattr(torch.export, "load", forbidden)
        mp.setattr(pickle, "Unpickler", _NoUnpickler)
        yield


def write_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    return path


def write_torch_save(path: Path) -> Path:
    torch.save(nn.Linear(2, 2).state_dict(), path)
    return path


def write_legacy_torch_save(path: Path) -> Path:
    torch.save(nn.Linear(2, 2).state_dict(), path, _use_new_zipfile_serialization=False)
    return path


def write_torchscript(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, but users still have such files
        torch.jit.script(nn.Linear(2, 2)).save(str(path))  # type: ignore[no-untyped-call]
    return path


def write_pt2(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),))
        torch.export.save(program, str(path))
    return path


UNSAFE: list[tuple[str, Callable[[Path], Path], str]] = [
    ("w.pkl", write_pickle, "pickle"),
    ("w.pt", write_torch_save, "pickle"),
    ("w.pth", write_legacy_torch_save, "pickle"),
    ("m.pt", write_torchscript, "torchscript-zip"),
    ("m.pt2", write_pt2, "pt2"),
]


@pytest.mark.parametrize(("name", "writer", "expected"), UNSAFE, ids=[u[2] + ":" + u[0] for u in UNSAFE])
def test_unsafe_formats_detected_and_refused(
    tmp_path: Path, name: str, writer: Callable[[Path], Path], expected: str
) -> None:
    path = writer(tmp_path / name)
    with no_deserialisation():
        assert detect_model_format(path) == expected
        with pytest.raises(ModelError) as err:
            refuse_unsafe(path)
        assert err.value.code == "unsupported_format"
        assert ".onnx" in err.value.message and ".safetensors" in err.value.message
        # The same bytes under innocent names are still refused by both loaders.
        disguised_onnx = path.rename(tmp_path / "model.onnx")
        with pytest.raises(ModelError) as err:
            load_onnx(disguised_onnx)
        assert err.value.code == "unsupported_format"
        disguised_st = disguised_onnx.rename(tmp_path / "model.safetensors")
        with pytest.raises(WeightsError) as werr:
            load_weights(nn.Linear(2, 2), disguised_st)
        assert werr.value.code == "unsupported_format"


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pt2", ".ckpt"])
def test_unsafe_extension_refused_even_with_unknown_bytes(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x00\x01 some bytes")
    with pytest.raises(ModelError) as err:
        refuse_unsafe(path)
    assert err.value.code == "unsupported_format"


def test_safe_formats_detected(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert detect_model_format(tmp_path / "w.safetensors") == "safetensors"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
    )
    onnx.save_model(onnx.helper.make_model(graph), tmp_path / "m.onnx")
    assert detect_model_format(tmp_path / "m.onnx") == "onnx"
    refuse_unsafe(tmp_path / "m.onnx")
    refuse_unsafe(tmp_path / "w.safetensors")


@pytest.mark.parametrize("content", [b"", b"hello world, not a model", bytes(range(256)) * 4, b"PK\x03\x04junk"])
def test_unknown_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    assert detect_model_format(path) == "unknown"
    refuse_unsafe(path)  # unknown is for the specific loaders to reject


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DwfError) as err:
        detect_model_format(tmp_path / "nope.onnx")
    assert err.value.code == "not_found"
    with pytest.raises(DwfError) as err:
        detect_model_format(tmp_path)
    assert err.value.code == "not_found"
