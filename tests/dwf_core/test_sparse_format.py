"""Tests of the dwf-sparse format: bit-exact round trips, encoding choice, size, validation of bad files."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dwf_core.errors import ExportError
from dwf_core.export import load_sparse, save_sparse
from dwf_core.sparse_format import DTYPES, bound_bytes, choose_encoding, encoding_sizes

BIT_VIEW = {
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float64: torch.int64,
}
ALL_DTYPES = list(DTYPES.values())
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
SHAPES = [(), (7,), (5, 3), (4, 3, 3, 3), (0, 5)]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bit pattern (floats as same-width ints) for exact comparison."""
    return t.view(BIT_VIEW[t.dtype]) if t.dtype in BIT_VIEW else t


def assert_bit_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same dtype, shape and bits."""
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b))


def random_sparse(shape: tuple[int, ...], dtype: torch.dtype, sparsity: float, seed: int = 0) -> torch.Tensor:
    """A random tensor where a `sparsity` fraction of entries are exact (+0) zeros."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        dense = torch.ones(shape, dtype=torch.bool)
    elif dtype.is_floating_point:
        dense = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    else:
        low = 0 if dtype == torch.uint8 else -100
        dense = torch.randint(low, 100, shape, generator=g).to(dtype)
        dense[dense == 0] = 1  # keep the sparsity exact: only the mask below makes zeros
    keep = torch.rand(shape, generator=g) >= sparsity
    # torch.where, not multiply: x * 0 would give -0.0 for negative x, which is a non-zero bit pattern.
    return torch.where(keep, dense, torch.zeros((), dtype=dtype))


def stored_bytes(path: Path, name: str) -> int:
    """Sum of nbytes of every safetensors entry belonging to tensor `name`."""
    raw = load_file(str(path))
    return sum(t.numel() * t.element_size() for k, t in raw.items() if k == name or k.startswith(name + "::"))


def header_overhead(path: Path) -> int:
    """Bytes of the safetensors header: the 8-byte length plus the JSON header."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
    return 8 + int(length)


# ----------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_round_trip_bit_exact(tmp_path: Path, sparsity: float, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """Every dtype/shape/sparsity comes back bit for bit, with the smallest encoding, sized exactly."""
    tensor = random_sparse(shape, dtype, sparsity)
    path = tmp_path / "w.safetensors"
    stats = save_sparse({"w": tensor}, path)
    back = load_sparse(path)
    assert list(back) == ["w"]
    assert_bit_equal(back["w"], tensor)

    (info,) = stats.tensors
    nnz = int((bits(tensor) != 0).sum())
    sizes = encoding_sizes(tuple(shape), dtype, nnz)
    assert info.nnz == nnz and info.numel == tensor.numel()
    assert info.shape == tuple(shape) and info.dtype == str(dtype).removeprefix("torch.")
    assert info.encoding == choose_encoding(sizes)
    assert info.bytes == min(sizes.values())
    assert stored_bytes(path, "w") == info.bytes, "reported bytes must equal the arrays actually stored"
    assert stats.bound_bytes == bound_bytes(nnz, tensor.numel(), tensor.element_size())
    assert stats.file_bytes == path.stat().st_size
    if tensor.dim() == 0 or tensor.numel() == 0:
        assert info.encoding == "dense"


SPECIAL_F32 = [0x80000000, 0x7FC00001, 0xFFC12345, 0x7F800001, 0x7F800000, 0xFF800000, 0x00000001]
# Per dtype: -0.0, quiet NaN with payload, negative signaling NaN with payload, +inf, -inf, smallest denormal.
SPECIALS = {
    torch.float16: [0x8000, 0x7E01, 0xFD23, 0x7C00, 0xFC00, 0x0001],
    torch.bfloat16: [0x8000, 0x7FC1, 0xFF81, 0x7F80, 0xFF80, 0x0001],
    torch.float32: [0x80000000, 0x7FC00001, 0xFF812345, 0x7F800000, 0xFF800000, 0x00000001],
    torch.float64: [
        0x8000000000000000,
        0x7FF8000000000001,
        0xFFF0000000000123,
        0x7FF0000000000000,
        0xFFF0000000000000,
        0x0000000000000001,
    ],
}


def from_unsigned(patterns: list[int], dtype: torch.dtype) -> torch.Tensor:
    """Unsigned bit patterns as a tensor of `dtype` (via the same-width signed integer)."""
    width = torch.empty((), dtype=dtype).element_size() * 8
    signed = [p - (1 << width) if p >= 1 << (width - 1) else p for p in patterns]
    return torch.tensor(signed, dtype=torch.int64).to(BIT_VIEW[dtype]).view(dtype)


@pytest.mark.parametrize("sparsity", [0.0, 0.85, 0.995])
@pytest.mark.parametrize("dtype", list(SPECIALS), ids=str)
def test_negative_zero_and_nan_payloads_preserved(tmp_path: Path, sparsity: float, dtype: torch.dtype) -> None:
    """-0.0, NaNs with payloads, signaling NaN, ±inf and denormals survive every encoding exactly."""
    tensor = random_sparse((300, 784), dtype, sparsity, seed=3)
    positions = torch.tensor([0, 1, 5000, 123456, 200000, 235199])
    tensor.view(-1)[positions] = from_unsigned(SPECIALS[dtype], dtype)
    assert torch.equal(bits(tensor.view(-1)[positions]), bits(from_unsigned(SPECIALS[dtype], dtype)))
    path = tmp_path / "s.safetensors"
    stats = save_sparse({"w": tensor}, path)
    expected_encoding = {0.0: "dense", 0.85: "bitmask", 0.995: "csr"}[sparsity]
    assert stats.tensors[0].encoding == expected_encoding
    back = load_sparse(path)["w"]
    assert_bit_equal(back, tensor)
    assert torch.signbit(back.view(-1)[0]) and back.view(-1)[0] == 0  # -0.0 came back as -0.0


def test_float32_specials_exact(tmp_path: Path) -> None:
    """A mostly-zero float32 tensor holding only special bit patterns round-trips exactly."""
    tensor = torch.zeros(4096)
    positions = torch.arange(len(SPECIAL_F32)) * 97
    tensor[positions] = from_unsigned(SPECIAL_F32, torch.float32)
    assert torch.equal(bits(tensor[positions]), bits(from_unsigned(SPECIAL_F32, torch.float32)))
    tensor = tensor.reshape(64, 64)
    stats = save_sparse({"w": tensor}, tmp_path / "f.safetensors")
    assert stats.tensors[0].nnz == len(SPECIAL_F32)  # -0.0 counts as a stored value
    assert_bit_equal(load_sparse(tmp_path / "f.safetensors")["w"], tensor)


# ----------------------------------------------------------------------------------- encoding choice


@pytest.mark.parametrize(
    ("sparsity", "encoding"),
    [(0.0, "dense"), (0.3, "bitmask"), (0.8, "bitmask"), (0.85, "bitmask"), (0.9, "bitmask"), (0.99, "csr")],
)
def test_encoding_choice_300x784(tmp_path: Path, sparsity: float, encoding: str) -> None:
    """Dense when full, bitmask in the 30-90 % band, csr when very sparse (float32 300x784)."""
    stats = save_sparse({"w": random_sparse((300, 784), torch.float32, sparsity)}, tmp_path / "w.safetensors")
    assert stats.tensors[0].encoding == encoding


def test_size_300x784_at_99_percent(tmp_path: Path) -> None:
    """The file stays within 1.15 × the information bound (+ header) and far below dense."""
    tensor = random_sparse((300, 784), torch.float32, 0.99, seed=1)
    path = tmp_path / "w.safetensors"
    stats = save_sparse({"w": tensor}, path)
    overhead = header_overhead(path)
    data = stats.file_bytes - overhead
    dense = tensor.numel() * 4
    ratio = data / stats.bound_bytes
    assert stats.tensors[0].encoding == "csr"
    assert stats.file_bytes <= 1.15 * stats.bound_bytes + overhead, (
        f"data {data} B = {ratio:.3f} × bound {stats.bound_bytes} B (header {overhead} B), limit 1.15"
    )
    assert data / dense < 0.05, f"data {data} B is {data / dense:.4f} of dense {dense} B"


def test_csr_index_width(tmp_path: Path) -> None:
    """Column indices are uint16 up to 65536 columns and int32 beyond; 1-D tensors are a single row."""
    narrow = random_sparse((2, 65536), torch.float32, 0.999, seed=2)
    wide = random_sparse((70000,), torch.float32, 0.999, seed=3)
    path = tmp_path / "w.safetensors"
    stats = save_sparse({"narrow": narrow, "wide": wide}, path)
    assert [t.encoding for t in stats.tensors] == ["csr", "csr"]
    raw = load_file(str(path))
    assert raw["narrow::indices"].dtype == torch.uint16
    assert raw["wide::indices"].dtype == torch.int32
    assert raw["wide::indptr"].tolist() == [0, stats.tensors[1].nnz]
    back = load_sparse(path)
    assert_bit_equal(back["narrow"], narrow)
    assert_bit_equal(back["wide"], wide)


def test_bitmask_layout_is_lsb_first(tmp_path: Path) -> None:
    """The mask is numpy.packbits(bitorder='little') of the row-major non-zero pattern."""
    tensor = random_sparse((13, 11), torch.float32, 0.6, seed=4)
    path = tmp_path / "w.safetensors"
    assert save_sparse({"w": tensor}, path).tensors[0].encoding == "bitmask"
    raw = load_file(str(path))
    nonzero = (tensor.reshape(-1) != 0).numpy()
    assert np.array_equal(raw["w::mask"].numpy(), np.packbits(nonzero, bitorder="little"))
    assert torch.equal(raw["w::values"], tensor.reshape(-1)[torch.from_numpy(nonzero)])


def test_metadata_and_order(tmp_path: Path) -> None:
    """Header carries format, version, a tensors table and user metadata; key order is preserved."""
    state = {"z.weight": random_sparse((20, 30), torch.float32, 0.95), "a.bias": torch.zeros(20)}
    path = tmp_path / "m.safetensors"
    stats = save_sparse(state, path, metadata={"model": "mlp", "sparsity": "0.95"})
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "dwf-sparse" and meta["version"] == "1"
    assert meta["model"] == "mlp" and meta["sparsity"] == "0.95"
    table = json.loads(meta["tensors"])
    assert list(table) == ["z.weight", "a.bias"]
    assert table["z.weight"] == {"shape": [20, 30], "dtype": "float32", "encoding": stats.tensors[0].encoding}
    assert list(load_sparse(path)) == ["z.weight", "a.bias"]
    json.dumps(stats.to_dict())  # JSON-ready
    assert stats.to_dict()["tensors"][1]["shape"] == [20]


def test_module_input_and_strict_load(tmp_path: Path) -> None:
    """A module (incl. BatchNorm buffers) saved sparse loads back with load_state_dict(strict=True)."""
    torch.manual_seed(0)
    first = nn.Linear(8, 16)
    model = nn.Sequential(first, nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    model(torch.randn(5, 8))
    with torch.no_grad():
        first.weight[torch.rand_like(first.weight) < 0.9] = 0
    path = tmp_path / "model.safetensors"
    stats = save_sparse(model, path)
    assert stats.numel == sum(t.numel() for t in model.state_dict().values())
    fresh = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    fresh.load_state_dict(load_sparse(path), strict=True)
    for key, value in model.state_dict().items():
        assert_bit_equal(fresh.state_dict()[key], value)


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    """Saving over an existing file replaces it and leaves only the destination in the directory."""
    path = tmp_path / "sub" / "w.safetensors"
    save_sparse({"w": torch.ones(3)}, path)
    save_sparse({"w": torch.zeros(3)}, path)
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]
    assert_bit_equal(load_sparse(path)["w"], torch.zeros(3))


# ------------------------------------------------------------------------------------- writer errors


def test_rejects_separator_in_name(tmp_path: Path) -> None:
    """Names containing '::' would collide with part keys."""
    with pytest.raises(ExportError) as err:
        save_sparse({"a::mask": torch.ones(2)}, tmp_path / "x.safetensors")
    assert err.value.code == "invalid_tensor_name" and err.value.param == "a::mask"
    assert not list(tmp_path.iterdir())


def test_rejects_unsupported_dtype(tmp_path: Path) -> None:
    """Complex tensors are not in the allowlist."""
    with pytest.raises(ExportError) as err:
        save_sparse({"c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "x.safetensors")
    assert err.value.code == "unsupported_dtype" and err.value.param == "c"


@pytest.mark.parametrize("meta", [{"format": "x"}, {"tensors": "{}"}, {"k": 1}])
def test_rejects_bad_user_metadata(tmp_path: Path, meta: dict[str, object]) -> None:
    """Reserved keys and non-str values are refused."""
    with pytest.raises(ExportError) as err:
        save_sparse({"w": torch.ones(2)}, tmp_path / "x.safetensors", metadata=meta)  # type: ignore[arg-type]
    assert err.value.code == "invalid_metadata"


# ------------------------------------------------------------------------------------- reader errors


def _valid_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]]:
    """A valid file with one dense, one bitmask and one csr tensor; returns its raw entries and header."""
    state = {
        "dense": random_sparse((4, 4), torch.float32, 0.0),
        "bm": random_sparse((30, 30), torch.float32, 0.8, seed=5),
        "csr": random_sparse((40, 500), torch.float32, 0.99, seed=6),
    }
    path = tmp_path / "ok.safetensors"
    stats = save_sparse(state, path)
    assert [t.encoding for t in stats.tensors] == ["dense", "bitmask", "csr"]
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
    return path, load_file(str(path)), meta


def _rewrite(path: Path, raw: dict[str, torch.Tensor], meta: dict[str, str] | None) -> Path:
    """Write tampered entries/header to a new file next to `path`."""
    bad = path.with_name("bad.safetensors")
    save_file({k: v.contiguous() for k, v in raw.items()}, str(bad), metadata=meta)
    return bad


def _table_edit(meta: dict[str, str], name: str, **changes: object) -> dict[str, str]:
    """Header copy with one tensor's table entry changed."""
    table = json.loads(meta["tensors"])
    table[name].update(changes)
    return {**meta, "tensors": json.dumps(table)}


def _tamper_indptr_decreasing(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """Swap two indptr entries so it decreases."""
    indptr = raw["csr::indptr"].clone()
    indptr[1], indptr[-2] = int(indptr[-2]), int(indptr[1])
    raw["csr::indptr"] = indptr
    return "csr"


def _tamper_indptr_end(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """Make indptr end past nnz."""
    raw["csr::indptr"] = raw["csr::indptr"].clone()
    raw["csr::indptr"][-1] += 1
    return "csr"


def _tamper_index_out_of_range(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """Point a column index past the last column."""
    indices = raw["csr::indices"].to(torch.int32)
    indices[-1] = 500
    raw["csr::indices"] = indices.to(torch.uint16)
    return "csr"


def _tamper_duplicate_column(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """Repeat a column inside a row (would silently drop a value)."""
    indptr = raw["csr::indptr"]
    row = int(torch.nonzero(indptr[1:] - indptr[:-1] >= 2)[0])
    indices = raw["csr::indices"].to(torch.int32)
    indices[int(indptr[row]) + 1] = indices[int(indptr[row])]
    raw["csr::indices"] = indices.to(torch.uint16)
    return "csr"


def _tamper_indices_dtype(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """Store indices as int64 instead of uint16."""
    raw["csr::indices"] = raw["csr::indices"].to(torch.int64)
    return "csr"


def _tamper_missing_values(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """Drop the values array."""
    del raw["bm::values"]
    return "bm"


def _tamper_values_count(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """One value too few for the mask's popcount."""
    raw["bm::values"] = raw["bm::values"][:-1]
    return "bm"


def _tamper_mask_length(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """A mask one byte short."""
    raw["bm::mask"] = raw["bm::mask"][:-1]
    return "bm"


def _tamper_mask_padding(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """Set a padding bit after numel (900 bits -> 4 padding bits in the last byte)."""
    raw["bm::mask"] = raw["bm::mask"].clone()
    raw["bm::mask"][-1] |= 0x80
    return "bm"


def _tamper_values_dtype(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """Values stored as float64 while the table says float32."""
    raw["bm::values"] = raw["bm::values"].to(torch.float64)
    return "bm"


def _tamper_dense_shape(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """A dense tensor whose stored shape disagrees with the table."""
    raw["dense"] = raw["dense"].reshape(2, 8)
    return "dense"


def _tamper_extra_key(raw: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """An entry the table does not account for."""
    raw["stray"] = torch.ones(1)
    return "stray"


TAMPER_DATA = [
    _tamper_indptr_decreasing,
    _tamper_indptr_end,
    _tamper_index_out_of_range,
    _tamper_duplicate_column,
    _tamper_indices_dtype,
    _tamper_missing_values,
    _tamper_values_count,
    _tamper_mask_length,
    _tamper_mask_padding,
    _tamper_values_dtype,
    _tamper_dense_shape,
    _tamper_extra_key,
]


@pytest.mark.parametrize("tamper", TAMPER_DATA, ids=lambda f: f.__name__.removeprefix("_tamper_"))
def test_tampered_data_rejected(tmp_path: Path, tamper: object) -> None:
    """Every inconsistency in the stored arrays raises corrupt_sparse_file naming the tensor."""
    path, raw, meta = _valid_file(tmp_path)
    name = tamper(raw, meta)  # type: ignore[operator]
    with pytest.raises(ExportError) as err:
        load_sparse(_rewrite(path, raw, meta))
    assert err.value.code == "corrupt_sparse_file"
    assert err.value.param == name


@pytest.mark.parametrize(
    ("edit", "param"),
    [
        (lambda m: {k: v for k, v in m.items() if k != "format"}, "format"),
        (lambda m: {**m, "format": "other"}, "format"),
        (lambda m: {**m, "version": "2"}, "version"),
        (lambda m: {**m, "tensors": "{not json"}, "tensors"),
        (lambda m: {**m, "tensors": "[]"}, "tensors"),
        (lambda m: _table_edit(m, "bm", dtype="complex64"), "bm"),
        (lambda m: _table_edit(m, "bm", encoding="rle"), "bm"),
        (lambda m: _table_edit(m, "bm", shape=[30, -30]), "bm"),
        (lambda m: _table_edit(m, "bm", shape=[30, 31]), "bm"),
        (lambda m: _table_edit(m, "csr", shape=[500, 40]), "csr"),
        (lambda m: _table_edit(m, "dense", dtype="float16"), "dense"),
        (lambda m: _table_edit(m, "bm", encoding="csr"), "bm"),
        (lambda m: None, "format"),
    ],
)
def test_wrong_metadata_rejected(tmp_path: Path, edit: object, param: str) -> None:
    """Missing/foreign format, other versions, malformed tables and disagreeing declarations all fail."""
    path, raw, meta = _valid_file(tmp_path)
    with pytest.raises(ExportError) as err:
        load_sparse(_rewrite(path, raw, edit(meta)))  # type: ignore[operator]
    assert err.value.code == "corrupt_sparse_file"
    assert err.value.param == param


def test_not_safetensors_and_missing_file(tmp_path: Path) -> None:
    """Garbage bytes are corrupt (param = path); a missing file is file_not_found."""
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3 + b"not a safetensors file" * 4)
    with pytest.raises(ExportError) as err:
        load_sparse(junk)
    assert err.value.code == "corrupt_sparse_file" and err.value.param == str(junk)
    truncated = tmp_path / "trunc.safetensors"
    path, _, _ = _valid_file(tmp_path)
    truncated.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(ExportError) as err:
        load_sparse(truncated)
    assert err.value.code == "corrupt_sparse_file"
    with pytest.raises(ExportError) as err:
        load_sparse(tmp_path / "absent.safetensors")
    assert err.value.code == "file_not_found"


def test_plain_safetensors_is_not_sparse(tmp_path: Path) -> None:
    """A dense safetensors file without the dwf-sparse header is rejected, not misread."""
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ExportError) as err:
        load_sparse(path)
    assert err.value.code == "corrupt_sparse_file" and err.value.param == "format"


def test_device_argument(tmp_path: Path) -> None:
    """Tensors land on the requested device; a nonsense device is invalid_device."""
    path = tmp_path / "w.safetensors"
    save_sparse({"w": random_sparse((10, 10), torch.float32, 0.9)}, path)
    assert load_sparse(path, device=torch.device("cpu"))["w"].device.type == "cpu"
    assert load_sparse(path, device="meta")["w"].is_meta
    with pytest.raises(ExportError) as err:
        load_sparse(path, device="not-a-device")
    assert err.value.code == "invalid_device"


def test_sizes_formula_matches_definition() -> None:
    """encoding_sizes follows the documented byte counts (300x784 float32 at 2352 nnz)."""
    sizes = encoding_sizes((300, 784), torch.float32, 2352)
    assert sizes == {
        "dense": 300 * 784 * 4,
        "bitmask": math.ceil(300 * 784 / 8) + 2352 * 4,
        "csr": 301 * 4 + 2352 * 2 + 2352 * 4,
    }
    assert encoding_sizes((), torch.float32, 0) == {"dense": 4}
    assert choose_encoding({"dense": 8, "bitmask": 8, "csr": 8}) == "dense"
    assert choose_encoding({"dense": 9, "bitmask": 8, "csr": 8}) == "bitmask"
