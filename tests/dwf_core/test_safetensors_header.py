"""The shared safetensors header parser, independent of its intake and dataset callers."""

from __future__ import annotations

import io
import json
import struct

import pytest
import torch
from safetensors.torch import save

from dwf_core.safetensors_header import (
    DTYPE_ITEMSIZE,
    HeaderErrorFactory,
    SafetensorsHeader,
    parse_safetensors_header,
)


class HeaderError(Exception):
    """Error the tests' factory raises, recording the code and tensor it was given."""

    def __init__(self, message: str, code: str, tensor: str | None) -> None:
        super().__init__(message)
        self.message, self.code, self.tensor = message, code, tensor


def _make(message: str, *, code: str, tensor: str | None) -> HeaderError:
    return HeaderError(message, code, tensor)


FACTORY: HeaderErrorFactory = _make
ALL = frozenset(DTYPE_ITEMSIZE)


def _blob(header: object, data: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _parse(
    blob: bytes,
    allowed: frozenset[str] = ALL,
    *,
    mh: int = 1 << 20,
    max_tensors: int | None = None,
    max_elements: int | None = None,
) -> SafetensorsHeader:
    return parse_safetensors_header(
        io.BytesIO(blob),
        len(blob),
        error=FACTORY,
        allowed_dtypes=allowed,
        max_header_bytes=mh,
        max_tensors=max_tensors,
        max_elements=max_elements,
    )


def _fails(blob: bytes, code: str = "corrupt_file", allowed: frozenset[str] = ALL, **limits: int) -> HeaderError:
    with pytest.raises(HeaderError) as err:
        _parse(blob, allowed, **limits)
    assert err.value.code == code, err.value.message
    return err.value


def _e(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_library_written_file_round_trips() -> None:
    tensors = {"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.int64), "c": torch.zeros(0, dtype=torch.uint8)}
    blob = save(tensors, metadata={"k": "v"})
    header = _parse(blob)
    assert header.metadata == {"k": "v"}
    assert {k: (e.dtype, e.shape, e.numel) for k, e in header.tensors.items()} == {
        "a": ("F32", (2, 3), 6),
        "b": ("I64", (4,), 4),
        "c": ("U8", (0,), 0),
    }


def test_allowed_dtypes_is_the_callers_choice() -> None:
    blob = _blob({"t": _e("U16", [2], 0, 4)}, b"\0" * 4)
    assert _parse(blob).tensors["t"].dtype == "U16"
    err = _fails(blob, "dtype_not_allowed", allowed=frozenset({"F32", "U8"}))
    assert err.tensor == "t" and "allowed: F32, U8" in err.message


@pytest.mark.parametrize("dtype", ["F8_E4M3", "C64", "X99", 7, None])
def test_unknown_dtype_refused_even_if_everything_allowed(dtype: object) -> None:
    assert _fails(_blob({"t": {"dtype": dtype, "shape": [2], "data_offsets": [0, 2]}}, b"\0\0"), "dtype_not_allowed")


def test_allowlist_outside_itemsize_table_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="C64"):
        _parse(_blob({}, b""), allowed=frozenset({"F32", "C64"}))


@pytest.mark.parametrize(
    ("blob", "needle", "tensor"),
    [
        (_blob({"t": _e("F32", [1], 0, 4)}, b"\0" * 4, length=10_000), "follow", None),
        (b"\1\0\0", "too short", None),
        (_blob(b'{"t": 1, "t": 2}', b""), "repeats", None),
        (_blob(b'{"t": NaN}', b""), "non-JSON literal", None),
        (_blob(b"\xff{}", b""), "UTF-8 JSON", None),
        (_blob(b"[" * 100_000, b""), "UTF-8 JSON", None),
        (_blob([1], b""), "JSON object", None),
        (_blob({"__metadata__": {"k": 1}}, b""), "__metadata__", None),
        (_blob({"": _e("U8", [1], 0, 1)}, b"\0"), "empty", None),
        (_blob({"t": _e("U8", [1], 0, 1) | {"x": 1}}, b"\0"), "expected", "t"),
        (_blob({"t": _e("U8", [True], 0, 1)}, b"\0"), "shape", "t"),
        (_blob({"t": _e("U8", [1] * 33, 0, 1)}, b"\0"), "shape", "t"),
        (_blob({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0]}}, b"\0"), "data_offsets", "t"),
        (_blob({"t": _e("U8", [1], 1, 0)}, b"\0"), "outside", "t"),
        (_blob({"t": _e("U8", [1], 0, 2)}, b"\0"), "outside", "t"),
        (_blob({"t": _e("F32", [2], 0, 4)}, b"\0" * 4), "needs 8 bytes", "t"),
        (_blob({"a": _e("U8", [2], 0, 2), "b": _e("U8", [2], 1, 3)}, b"\0" * 3), "overlaps", None),
        (_blob({"a": _e("U8", [2], 1, 3)}, b"\0" * 3), "unaccounted", None),
        (_blob({"a": _e("U8", [2], 0, 2)}, b"\0" * 3), "cover", None),
    ],
)
def test_corrupt_headers(blob: bytes, needle: str, tensor: str | None) -> None:
    err = _fails(blob)
    assert needle in err.message and err.tensor == tensor


def test_bounds_are_too_large() -> None:
    blob = _blob({"a": _e("U8", [2], 0, 2), "b": _e("U8", [3], 2, 5)}, b"\0" * 5)
    _parse(blob, max_tensors=2, max_elements=5)
    assert "limit is 1" in _fails(blob, "too_large", max_tensors=1).message
    assert "limit is 4" in _fails(blob, "too_large", max_elements=4).message
    assert "limit is 8" in _fails(blob, "too_large", mh=8).message
    # The header-size bound is checked before the header length is compared with the file size.
    _fails(_blob({}, b"", length=1 << 62), "too_large")


def test_json_errors_keep_their_cause() -> None:
    err = _fails(_blob(b"{not json", b""))
    assert isinstance(err.__cause__, ValueError)
