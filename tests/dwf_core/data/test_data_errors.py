"""Bad, unsafe or oversized inputs fail with a DatasetError whose code and param say what to fix."""

from __future__ import annotations

import gzip
import json
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dwf_core.data import DataLimits, detect_format, load_dataset
from dwf_core.errors import ConfigError, DatasetError

from .builders import (
    grey_image,
    idx_bytes,
    png_bytes,
    split_arrays,
    tar_add,
    write_cifar,
    write_idx_dir,
    write_npz,
    write_safetensors,
    write_zip,
)

TINY = DataLimits(max_uncompressed_bytes=100_000, max_archive_members=5)


def _fails(spec: object, code: str, param: str | None, **kwargs: object) -> DatasetError:
    """Load `spec`, expecting a DatasetError with `code` and `param` (None: param not checked)."""
    with pytest.raises(DatasetError) as info:
        load_dataset(spec, **kwargs)  # type: ignore[arg-type]
    err = info.value
    assert err.code == code, err.message
    if param is not None:
        assert err.param == param, err.message
    assert err.message
    return err


def _edit(change: Callable[[dict[str, np.ndarray]], object]) -> dict[str, np.ndarray]:
    """Default arrays with one change applied."""
    arrays = split_arrays()
    change(arrays)
    return arrays


ARRAY_CASES = {
    "missing x_test": (_edit(lambda a: a.pop("x_test")), "missing_array", "x_test"),
    "x_val without y_val": (_edit(lambda a: a.update(x_val=a["x_test"])), "missing_array", "y_val"),
    "mismatched N": (_edit(lambda a: a.update(y_train=a["y_train"][:-1])), "shape_mismatch", "y_train"),
    "mismatched sample shape": (
        _edit(lambda a: a.update(x_test=np.zeros((8, 1, 4, 5), np.uint8))),
        "shape_mismatch",
        "x_test",
    ),
    "negative label": (_edit(lambda a: a["y_test"].__setitem__(2, -1)), "bad_labels", "y_test"),
    "non-integer label": (_edit(lambda a: a.update(y_train=a["y_train"] + 0.5)), "bad_labels", "y_train"),
    "2-D labels": (_edit(lambda a: a.update(y_test=np.zeros((8, 2), np.int64))), "bad_labels", "y_test"),
    "NaN input": (
        _edit(lambda a: a.update(x_train=np.where(np.arange(20)[:, None, None, None] == 3, np.nan, 1.0))),
        "non_finite",
        "x_train",
    ),
    "inf input": (_edit(lambda a: a.update(x_test=np.full((8, 1, 4, 4), np.inf))), "non_finite", "x_test"),
    "no sample dims": (_edit(lambda a: a.update(x_test=np.zeros(8, np.uint8))), "shape_mismatch", "x_test"),
    "empty split": (
        _edit(lambda a: a.update(x_test=np.zeros((0, 1, 4, 4), np.uint8), y_test=np.zeros(0, np.int64))),
        "empty_split",
        "x_test",
    ),
}


@pytest.mark.parametrize("case", list(ARRAY_CASES))
@pytest.mark.parametrize("writer", [write_npz, write_safetensors], ids=["npz", "safetensors"])
def test_bad_arrays(tmp_path: Path, writer: Callable[..., Path], case: str) -> None:
    """Each malformed split array fails with its specific code, naming the array."""
    arrays, code, param = ARRAY_CASES[case]
    _fails(writer(tmp_path / "d.bin", arrays), code, param)


def test_too_many_classes(tmp_path: Path) -> None:
    """A label beyond DataLimits.max_classes is refused."""
    arrays = _edit(lambda a: a["y_train"].__setitem__(0, 500))
    _fails(write_npz(tmp_path / "d.npz", arrays), "too_large", "y", limits=DataLimits(max_classes=100))


def test_npz_with_pickled_objects_refused(tmp_path: Path) -> None:
    """An object array (pickle) inside an npz is refused, never unpickled."""
    arrays = _edit(lambda a: a.update(y_test=np.array([{"evil": 1}] * 8, dtype=object)))
    path = write_npz(tmp_path / "p.npz", arrays, allow_pickle=True)
    _fails(path, "pickle_refused", "y_test")


def test_npz_member_over_budget_refused_before_loading(tmp_path: Path) -> None:
    """Declared array sizes are checked against the byte budget before loading."""
    arrays = _edit(lambda a: a.update(x_train=np.zeros((200, 1, 32, 32), np.uint8), y_train=np.zeros(200, np.int64)))
    _fails(write_npz(tmp_path / "big.npz", arrays), "too_large", None, limits=TINY)


def test_npz_too_many_samples(tmp_path: Path) -> None:
    """More samples than DataLimits.max_samples are refused."""
    _fails(write_npz(tmp_path / "d.npz", split_arrays()), "too_large", "x_train", limits=DataLimits(max_samples=10))


def _safetensors_raw(header: dict[str, object], data: bytes, length: int | None = None) -> bytes:
    """Hand-build a safetensors file so its header can be wrong."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    """One header entry."""
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("content", "code", "param"),
    [
        (_safetensors_raw({"x_train": _entry("U8", [2, 2], 0, 4)}, b"\0" * 4, length=10_000), "corrupt_file", "s.st"),
        (_safetensors_raw({"x_train": _entry("U8", [2, 2], 0, 4)}, b"\0" * 2), "corrupt_file", "s.st"),
        (
            _safetensors_raw({"x_train": _entry("U8", [4], 0, 4), "y_train": _entry("U8", [4], 2, 6)}, b"\0" * 6),
            "corrupt_file",
            "s.st",
        ),
        (_safetensors_raw({"x_train": _entry("C64", [1], 0, 8)}, b"\0" * 8), "bad_dtype", "x_train"),
        (_safetensors_raw({"x_train": _entry("U8", [3], 0, 4)}, b"\0" * 4), "corrupt_file", "s.st"),
        (_safetensors_raw({"x_train": [1, 2]}, b""), "corrupt_file", "s.st"),
    ],
    ids=["header-longer-than-file", "offsets-past-end", "overlap", "dtype", "size-mismatch", "entry-not-object"],
)
def test_bad_safetensors_header(tmp_path: Path, content: bytes, code: str, param: str) -> None:
    """Header problems found by our own parse fail before safetensors reads the file."""
    path = tmp_path / "s.st"
    path.write_bytes(content)
    _fails(path, code, param, fmt="safetensors")


def test_safetensors_header_longer_than_file_is_not_detected(tmp_path: Path) -> None:
    """An absurd header length is not mistaken for safetensors by detection."""
    path = tmp_path / "s.safetensors"
    path.write_bytes(_safetensors_raw({"x_train": _entry("U8", [2], 0, 2)}, b"\0\0", length=1 << 40))
    _fails(path, "unsupported_format", "s.safetensors")


def _idx_dir(tmp_path: Path, gz: bool = False) -> Path:
    """A valid IDX folder."""
    return write_idx_dir(tmp_path / "idx", split_arrays(), gz=gz)


def test_idx_truncated(tmp_path: Path) -> None:
    """An IDX file shorter than its dims declare is reported as truncated."""
    directory = _idx_dir(tmp_path)
    f = directory / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    err = _fails(f"mnist-idx:{directory}", "corrupt_file", "train-images-idx3-ubyte")
    assert "truncated" in err.message


def test_idx_trailing_data(tmp_path: Path) -> None:
    """Bytes after the declared IDX data are refused."""
    directory = _idx_dir(tmp_path)
    f = directory / "t10k-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes() + b"\0")
    _fails(f"mnist-idx:{directory}", "corrupt_file", "t10k-labels-idx1-ubyte")


def test_idx_wrong_magic(tmp_path: Path) -> None:
    """A wrong IDX magic is reported with the bytes found."""
    directory = _idx_dir(tmp_path)
    f = directory / "train-labels-idx1-ubyte"
    f.write_bytes(b"\x01\x00" + f.read_bytes()[2:])
    err = _fails(f"mnist-idx:{directory}", "bad_magic", "train-labels-idx1-ubyte")
    assert "0100" in err.message


def test_idx_missing_file(tmp_path: Path) -> None:
    """A missing IDX file is named by its expected name."""
    directory = _idx_dir(tmp_path)
    (directory / "t10k-labels-idx1-ubyte").unlink()
    _fails(f"mnist-idx:{directory}", "missing_file", "t10k-labels-idx1-ubyte")


def test_idx_label_count_mismatch(tmp_path: Path) -> None:
    """Label and image counts must agree."""
    directory = _idx_dir(tmp_path)
    (directory / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(19, np.uint8)))
    _fails(f"mnist-idx:{directory}", "shape_mismatch", "train-labels-idx1-ubyte")


def test_idx_gzip_bomb_over_budget(tmp_path: Path) -> None:
    """A gzip IDX declaring more than the budget is refused from its header."""
    directory = _idx_dir(tmp_path, gz=True)
    # Valid header declaring 1 MB of pixels: refused from the header, before decompressing them.
    bomb = idx_bytes(np.zeros((1000, 32, 32), np.uint8))
    (directory / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bomb))
    _fails(f"mnist-idx:{directory}", "too_large", "train-images-idx3-ubyte.gz", limits=TINY)


def test_idx_gzip_over_compression_ratio(tmp_path: Path) -> None:
    """A gzip stream expanding beyond the ratio cap is stopped."""
    directory = _idx_dir(tmp_path, gz=True)
    bomb = idx_bytes(np.zeros((3000, 32, 32), np.uint8))  # 3 MB of zeros -> a few KB of gzip
    (directory / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bomb))
    _fails(f"mnist-idx:{directory}", "archive_unsafe", "train-images-idx3-ubyte.gz")


def test_idx_corrupt_gzip(tmp_path: Path) -> None:
    """A damaged gzip stream is a corrupt_file error, not a zlib exception."""
    directory = _idx_dir(tmp_path, gz=True)
    f = directory / "t10k-images-idx3-ubyte.gz"
    data = f.read_bytes()
    f.write_bytes(data[:12] + bytes(b ^ 0xFF for b in data[12:40]) + data[40:])
    _fails(f"mnist-idx:{directory}", "corrupt_file", "t10k-images-idx3-ubyte.gz")


def _png() -> bytes:
    """A valid tiny PNG."""
    return png_bytes(grey_image(0))


@pytest.mark.parametrize(
    ("members", "code", "param"),
    [
        ({"a/1.png": b"", "../evil.png": b""}, "archive_unsafe", "../evil.png"),
        ({"a/1.png": b"", "/abs/evil.png": b""}, "archive_unsafe", "/abs/evil.png"),
        ({"a/1.png": b"", "C:/evil.png": b""}, "archive_unsafe", "C:/evil.png"),
        ({"a/1.png": b"", "a\\..\\..\\evil.png": b""}, "archive_unsafe", "a\\..\\..\\evil.png"),
        ({f"a/{i}.png": b"" for i in range(6)}, "too_large", "z.zip"),
    ],
    ids=["dotdot", "absolute", "drive", "backslash", "too-many-members"],
)
def test_unsafe_zip(tmp_path: Path, members: dict[str, bytes], code: str, param: str) -> None:
    """Path traversal names and too many members are refused before reading data."""
    members = {k: v or _png() for k, v in members.items()}
    _fails(write_zip(tmp_path / "z.zip", members), code, param, limits=TINY)


def test_zip_symlink_member(tmp_path: Path) -> None:
    """Symbolic-link members are refused."""
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/1.png", _png())
        link = zipfile.ZipInfo("a/2.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    _fails(path, "archive_unsafe", "a/2.png")


def test_zip_bomb_ratio(tmp_path: Path) -> None:
    """A member with an extreme compression ratio is refused as a zip bomb."""
    members = {"a/1.png": _png(), "a/big.png": b"\0" * 3_000_000}
    _fails(write_zip(tmp_path / "z.zip", members, compression=zipfile.ZIP_DEFLATED), "archive_unsafe", "a/big.png")


def test_zip_total_uncompressed_over_limit(tmp_path: Path) -> None:
    """The sum of declared member sizes is capped."""
    members = {"a/1.png": _png(), "a/2.png": np.random.default_rng(0).bytes(200_000)}
    _fails(write_zip(tmp_path / "z.zip", members), "too_large", "z.zip", limits=TINY)


def test_image_zip_size_mismatch_names_file(tmp_path: Path) -> None:
    """The first image of a different size is named with both sizes."""
    members = {
        "a/1.png": png_bytes(grey_image(0, (5, 4))),
        "a/2.png": png_bytes(grey_image(0, (5, 4))),
        "b/1.png": png_bytes(grey_image(0, (6, 4))),
    }
    err = _fails(write_zip(tmp_path / "z.zip", members), "shape_mismatch", "b/1.png")
    assert "6x4" in err.message and "5x4" in err.message


def test_image_zip_corrupt_image(tmp_path: Path) -> None:
    """An undecodable image is named."""
    members = {"a/1.png": _png(), "b/1.png": b"\x89PNG\r\n\x1a\nnot really"}
    _fails(write_zip(tmp_path / "z.zip", members), "corrupt_file", "b/1.png")


def test_image_zip_image_over_feature_limit(tmp_path: Path) -> None:
    """An image larger than max_features is refused before decoding."""
    members = {"a/1.png": png_bytes(Image.new("L", (20, 20))), "a/2.png": png_bytes(Image.new("L", (20, 20)))}
    _fails(write_zip(tmp_path / "z.zip", members), "too_large", "a/1.png", limits=DataLimits(max_features=100))


def test_image_zip_bad_layout(tmp_path: Path) -> None:
    """Images outside <class>/<image> are refused."""
    members = {"a/1.png": _png(), "a/deeper/2.png": _png(), "b/1.png": _png()}
    _fails(write_zip(tmp_path / "z.zip", members), "bad_layout", "a/deeper/2.png")


def test_image_zip_without_images_is_unsupported(tmp_path: Path) -> None:
    """A zip with neither arrays nor images is unsupported."""
    _fails(write_zip(tmp_path / "z.zip", {"notes.txt": b"hello"}), "unsupported_format", "z.zip")


def _tar_gz(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    """A gzipped tar of regular files plus an optional symlink member."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            tar_add(tar, name, data)
        if link:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


def test_cifar_tar_with_dotdot_member(tmp_path: Path) -> None:
    """A tar member with '..' is refused."""
    path = _tar_gz(tmp_path / "c.tar.gz", {"b/data_batch_1.bin": b"\0" * 3073, "../test_batch.bin": b"\0" * 3073})
    _fails(path, "archive_unsafe", "../test_batch.bin")


def test_cifar_tar_with_symlink(tmp_path: Path) -> None:
    """A tar symlink member is refused."""
    path = _tar_gz(tmp_path / "c.tar.gz", {"b/data_batch_1.bin": b"\0" * 3073}, link="b/test_batch.bin")
    _fails(path, "archive_unsafe", "b/test_batch.bin")


def test_cifar_bad_record_size(tmp_path: Path) -> None:
    """A batch that is not whole records is corrupt."""
    path = _tar_gz(tmp_path / "c.tar.gz", {"b/data_batch_1.bin": b"\0" * 3073, "b/test_batch.bin": b"\0" * 3000})
    _fails(path, "corrupt_file", "b/test_batch.bin")


def test_cifar_missing_test_batch(tmp_path: Path) -> None:
    """A CIFAR-10 tarball without test_batch.bin names it."""
    path = _tar_gz(tmp_path / "c.tar.gz", {"b/data_batch_1.bin": b"\0" * 3073})
    _fails(path, "missing_file", "test_batch.bin")


def test_cifar_label_out_of_range(tmp_path: Path) -> None:
    """CIFAR-10 labels must be below 10."""
    record = b"\x0c" + b"\0" * 3072  # label 12 in CIFAR-10
    path = _tar_gz(tmp_path / "c.tar.gz", {"b/data_batch_1.bin": record * 3, "b/test_batch.bin": record})
    _fails(path, "bad_labels", None)


def test_cifar_too_many_members(tmp_path: Path) -> None:
    """Tar member count is capped."""
    path = tmp_path / "c.tar.gz"
    write_cifar(path, "cifar10", extra={f"junk/{i}": b"x" for i in range(10)})
    _fails(path, "too_large", "c.tar.gz", limits=DataLimits(max_archive_members=8))


def test_cifar_tar_gzip_over_budget(tmp_path: Path) -> None:
    """Decompressed tar bytes are capped by the budget."""
    path = tmp_path / "c.tar.gz"
    write_cifar(path, "cifar10")  # ~50 kB of records
    _fails(path, "too_large", None, limits=DataLimits(max_uncompressed_bytes=20_000))


@pytest.mark.parametrize(
    ("text", "code", "param", "needle"),
    [
        ("a,b,label\n1,2,0\n3,x,1\n", "bad_value", "b", "line 3"),
        ("a,b,label\n1,2,0\n3,,1\n", "bad_value", "b", "line 3"),
        ("a,b,label\n1,2,0\n3,nan,1\n", "non_finite", "b", "line 3"),
        ("a,b,c\n1,2,0\n", "missing_column", "label", "label"),
        ("a,b,label\n1,2,0\n3,4\n", "bad_csv", "t.csv", "line 3"),
        ("a,b,label\n1,2,0\n3,4,-1\n", "bad_labels", "label", "line 3"),
        ("a,b,label\n1,2,0\n3,4,\n", "bad_labels", "label", "line 3"),
        ("a,A,label\n1,2,0\n", "bad_csv", "a", "twice"),
        ("a,label,split\n1,0,train\n2,1,dev\n", "bad_value", "split", "line 3"),
        ("a,label\n", "empty_split", "t.csv", "no data rows"),
    ],
    ids=[
        "non-numeric",
        "empty-cell",
        "nan",
        "no-label-column",
        "ragged",
        "negative",
        "empty-label",
        "dup",
        "split",
        "empty",
    ],
)
def test_bad_csv(tmp_path: Path, text: str, code: str, param: str, needle: str) -> None:
    """CSV problems name the line and column."""
    path = tmp_path / "t.csv"
    path.write_text(text)
    err = _fails(path, code, param)
    assert needle in err.message


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"\xff" + np.random.default_rng(0).bytes(500), "unrecognised"),
        (b"", "empty"),
        (b"\x93NUMPY" + b"\0" * 50, "np.savez"),
        (idx_bytes(np.zeros(3, np.uint8)), "mnist-idx"),
        (gzip.compress(b"just some bytes"), "tar"),
        (b"just one column\nno delimiter\n", "unrecognised"),
    ],
    ids=["random", "empty", "npy", "single-idx", "gzip-not-tar", "plain-text"],
)
def test_unsupported_format(tmp_path: Path, content: bytes, hint: str) -> None:
    """Content matching no format is unsupported_format, with a hint."""
    path = tmp_path / "blob"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        detect_format(path)
    assert info.value.code == "unsupported_format" and info.value.param == "blob"
    assert hint in info.value.message
    _fails(path, "unsupported_format", "blob")


def test_file_over_size_limit(tmp_path: Path) -> None:
    """Files over max_file_bytes are refused."""
    path = write_npz(tmp_path / "d.npz", split_arrays())
    _fails(path, "too_large", "d.npz", limits=DataLimits(max_file_bytes=100))


def test_missing_path(tmp_path: Path) -> None:
    """A missing path is not_found."""
    _fails(tmp_path / "nope.npz", "not_found", str(tmp_path / "nope.npz"))
    _fails(f"mnist-idx:{tmp_path / 'nope'}", "not_found", None)


def test_forced_format_mismatch_is_clear(tmp_path: Path) -> None:
    """Forcing the wrong format still gives a typed error."""
    path = write_npz(tmp_path / "d.npz", split_arrays())
    _fails(path, "corrupt_file", "d.npz", fmt="safetensors")
    _fails(path, "unsupported_format", "d.npz", fmt="cifar10")
    _fails(path, "unsupported_format", "d.npz", fmt="csv")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 0.6}, "val_fraction"),
        ({"normalize": "zscore"}, "normalize"),
        ({"fmt": "hdf5"}, "fmt"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], param: str) -> None:
    """Out-of-range arguments are ConfigErrors naming the argument."""
    path = write_npz(tmp_path / "d.npz", split_arrays())
    with pytest.raises(ConfigError) as info:
        load_dataset(path, **kwargs)  # type: ignore[arg-type]
    assert info.value.param == param


def test_bad_limits() -> None:
    """Non-positive limits are refused."""
    with pytest.raises(ConfigError):
        DataLimits(max_samples=0)


def test_too_few_samples_to_carve(tmp_path: Path) -> None:
    """A single train sample cannot be split into train and val."""
    arrays = _edit(lambda a: a.update(x_train=a["x_train"][:1], y_train=a["y_train"][:1]))
    _fails(write_npz(tmp_path / "d.npz", arrays), "empty_split", "x_train")
