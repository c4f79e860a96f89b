"""Archive checks run before anything is extracted or decoded (reliability-tests.md T13 (2), issue 5 item 3).

Every hostile zip/tar is refused with a typed DatasetError (code + param) by ``dwf_core.archives`` alone and
by ``load_dataset``, and the tests assert that no member was opened and no image decoded on the way.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dwf_core.archives import ArchiveLimits, check_tar_stream, check_zip_stream
from dwf_core.data import DataLimits, load_dataset
from dwf_core.errors import DatasetError
from dwf_core.intake import ModelLimits
from dwf_service import sniff
from tests.dwf_core.data.builders import grey_image, png_bytes, tar_add, write_zip

SMALL = ArchiveLimits(max_members=5, max_uncompressed_bytes=100_000, max_compression_ratio=200.0)
SMALL_DATA = DataLimits(max_archive_members=5, max_uncompressed_bytes=100_000)


def _png(value: int = 0) -> bytes:
    return png_bytes(grey_image(value))


@pytest.fixture
def no_extraction(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record every zip member opened and every image decoded; the test asserts the list stays empty."""
    opened: list[str] = []
    real_open, real_image_open = zipfile.ZipFile.open, Image.open

    def spy_open(self: zipfile.ZipFile, name: object, *args: object, **kwargs: object) -> object:
        mode = args[0] if args else kwargs.get("mode", "r")
        if mode == "r":  # writing test archives opens members with mode "w"
            opened.append(f"zip:{getattr(name, 'filename', name)}")
        return real_open(self, name, *args, **kwargs)  # type: ignore[arg-type]

    def spy_image_open(*args: object, **kwargs: object) -> object:
        opened.append("image")
        return real_image_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(zipfile.ZipFile, "open", spy_open)
    monkeypatch.setattr(Image, "open", spy_image_open)
    yield opened


def _zip_check(path: Path, limits: ArchiveLimits = SMALL) -> None:
    with path.open("rb") as fh:
        check_zip_stream(fh, path.stat().st_size, path.name, limits)


def _load_fails(path: Path, code: str, param: str, limits: DataLimits = SMALL_DATA) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_dataset(path, limits=limits)
    assert (info.value.code, info.value.param) == (code, param), info.value.message
    return info.value


def _patch_sizes(data: bytes, name: bytes, *, compressed: int | None = None, size: int | None = None) -> bytes:
    """Rewrite the sizes a zip declares for member ``name`` in its local header and central directory."""
    buf = bytearray(data)
    # Per header kind: signature, offsets of the name length, the name, the compressed size and the size.
    for signature, name_len_at, name_at, compressed_at, size_at in (
        (b"PK\x03\x04", 26, 30, 18, 22),  # local file header
        (b"PK\x01\x02", 28, 46, 20, 24),  # central directory entry
    ):
        pos = buf.find(signature)
        while pos >= 0:
            name_len = struct.unpack_from("<H", buf, pos + name_len_at)[0]
            if bytes(buf[pos + name_at : pos + name_at + name_len]) == name:
                if compressed is not None:
                    struct.pack_into("<L", buf, pos + compressed_at, compressed)
                if size is not None:
                    struct.pack_into("<L", buf, pos + size_at, size)
            pos = buf.find(signature, pos + 4)
    return bytes(buf)


# ----------------------------------------------------------------------------- zip


@pytest.mark.parametrize(
    ("bad_name", "code"),
    [
        ("../evil.png", "archive_unsafe"),
        ("/etc/evil.png", "archive_unsafe"),
        ("C:/evil.png", "archive_unsafe"),
        ("a\\..\\..\\evil.png", "archive_unsafe"),
        ("a/b/../../../evil.png", "archive_unsafe"),
    ],
    ids=["dotdot", "absolute", "drive", "backslash", "nested-dotdot"],
)
def test_zip_path_traversal_refused_before_extraction(
    tmp_path: Path, no_extraction: list[str], bad_name: str, code: str
) -> None:
    path = write_zip(tmp_path / "imgs.zip", {"a/1.png": _png(), bad_name: _png(1)})
    with pytest.raises(DatasetError) as info:
        _zip_check(path)
    assert (info.value.code, info.value.param) == (code, bad_name)
    _load_fails(path, code, bad_name)
    assert no_extraction == []
    assert not (tmp_path.parent / "evil.png").exists()


def test_zip_symlink_refused_before_extraction(tmp_path: Path, no_extraction: list[str]) -> None:
    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/1.png", _png())
        link = zipfile.ZipInfo("a/2.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DatasetError) as info:
        _zip_check(path)
    assert (info.value.code, info.value.param) == ("archive_unsafe", "a/2.png")
    _load_fails(path, "archive_unsafe", "a/2.png")
    assert no_extraction == []


def test_zip_too_many_members(tmp_path: Path, no_extraction: list[str]) -> None:
    path = write_zip(tmp_path / "imgs.zip", {f"a/{i}.png": _png() for i in range(6)})
    with pytest.raises(DatasetError) as info:
        _zip_check(path)
    assert info.value.code == "too_large"
    _load_fails(path, "too_large", "imgs.zip")
    assert no_extraction == []


def test_forged_directory_count_refused_before_zipfile_parses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An end record announcing millions of entries is refused from the 22-byte record, not a ZipInfo list."""
    data = bytearray((write_zip(tmp_path / "x.zip", {"a/1.png": _png()})).read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<2H", data, eocd + 8, 0xFFFE, 0xFFFE)  # entries on disk, entries in total
    path = tmp_path / "forged.zip"
    path.write_bytes(bytes(data))
    built: list[str] = []
    real_init = zipfile.ZipFile.__init__

    def spy_init(self: zipfile.ZipFile, *args: Any, **kwargs: Any) -> None:
        built.append("ZipFile")
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "__init__", spy_init)
    limits = DataLimits(max_archive_members=1000)
    _load_fails(path, "too_large", "forged.zip", limits=limits)
    assert built == []


def test_zip_total_uncompressed_bytes(tmp_path: Path, no_extraction: list[str]) -> None:
    noise = np.random.default_rng(0).bytes(60_000)
    path = write_zip(tmp_path / "imgs.zip", {"a/1.png": noise, "a/2.png": noise})
    with pytest.raises(DatasetError) as info:
        _zip_check(path)
    assert info.value.code == "too_large"
    _load_fails(path, "too_large", "imgs.zip")
    assert no_extraction == []


def test_zip_bomb_ratio(tmp_path: Path, no_extraction: list[str]) -> None:
    path = write_zip(
        tmp_path / "imgs.zip", {"a/1.png": _png(), "a/bomb.png": b"\0" * 5_000_000}, compression=zipfile.ZIP_DEFLATED
    )
    assert path.stat().st_size < 50_000
    _load_fails(path, "archive_unsafe", "a/bomb.png", limits=DataLimits())
    assert no_extraction == []


def test_member_declaring_10_gb_refused_from_metadata(tmp_path: Path, no_extraction: list[str]) -> None:
    """T13 (2): a ~1 KB member that declares 10 GB (zip64 sizes) is refused without inflating anything."""
    data = bytearray(
        write_zip(
            tmp_path / "x.zip", {"a/1.png": _png(), "a/huge.png": b"\0" * 1000}, compression=zipfile.ZIP_DEFLATED
        ).read_bytes()
    )
    # Give the member's central directory entry a zip64 extra field declaring 10 GiB uncompressed.
    central = data.find(b"PK\x01\x02")
    while data[central + 46 : central + 46 + 10] != b"a/huge.png":
        central = data.find(b"PK\x01\x02", central + 4)
    struct.pack_into("<L", data, central + 24, 0xFFFFFFFF)
    extra_len = struct.unpack_from("<H", data, central + 30)[0]
    struct.pack_into("<H", data, central + 30, extra_len + 12)
    at = central + 46 + 10
    data[at:at] = struct.pack("<2HQ", 1, 8, 10 * 1024**3)
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<L", data, eocd + 12, struct.unpack_from("<L", data, eocd + 12)[0] + 12)
    path = tmp_path / "imgs.zip"
    path.write_bytes(bytes(data))
    assert path.stat().st_size < 5_000
    with zipfile.ZipFile(path) as zf:  # the forgery is a well-formed zip declaring 10 GiB
        assert zf.getinfo("a/huge.png").file_size == 10 * 1024**3
    no_extraction.clear()
    err = _load_fails(path, "archive_unsafe", "a/huge.png", limits=DataLimits())
    assert str(10 * 1024**3) in err.message
    assert no_extraction == []


def test_declared_size_bounds_what_is_inflated(tmp_path: Path) -> None:
    """A member declaring 1 KiB but inflating to 10 MB is never read past 1 KiB: it fails as corrupt."""
    png = _png()
    payload = png + b"\0" * 10_000_000
    data = write_zip(tmp_path / "x.zip", {"a/1.png": png, "a/2.png": payload}, compression=zipfile.ZIP_DEFLATED)
    forged = _patch_sizes(data.read_bytes(), b"a/2.png", size=1024)
    path = tmp_path / "imgs.zip"
    path.write_bytes(forged)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("a/2.png").file_size == 1024
    err = _load_fails(path, "corrupt_file", "a/2.png", limits=DataLimits())
    assert "CRC" in err.message or "cannot" in err.message


def test_encrypted_member_refused(tmp_path: Path, no_extraction: list[str]) -> None:
    data = write_zip(tmp_path / "x.zip", {"a/1.png": _png()}).read_bytes()
    forged = bytearray(data)
    central = forged.find(b"PK\x01\x02")
    flags = struct.unpack_from("<H", forged, central + 8)[0]
    struct.pack_into("<H", forged, central + 8, flags | 0x1)
    path = tmp_path / "imgs.zip"
    path.write_bytes(bytes(forged))
    with pytest.raises(DatasetError) as info:
        _zip_check(path)
    assert (info.value.code, info.value.param) == ("unsupported_format", "a/1.png")
    _load_fails(path, "unsupported_format", "a/1.png")
    assert no_extraction == []


def test_truncated_central_directory_is_corrupt(tmp_path: Path) -> None:
    data = write_zip(tmp_path / "x.zip", {"a/1.png": _png()}).read_bytes()
    path = tmp_path / "imgs.zip"
    path.write_bytes(data[:-30])
    with pytest.raises(DatasetError) as info:
        _zip_check(path)
    assert info.value.code == "corrupt_file"


def test_valid_image_zip_still_loads(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "imgs.zip", {f"{c}/{i}.png": _png(10 * i + c) for c in range(2) for i in range(5)})
    summary_limits = ArchiveLimits(max_members=20, max_uncompressed_bytes=10**6)
    with path.open("rb") as fh:
        summary = check_zip_stream(fh, path.stat().st_size, path.name, summary_limits)
    assert summary.members == 10 and len(summary.names) == 10
    bundle = load_dataset(path, limits=DataLimits(max_archive_members=20))
    assert bundle.num_classes == 2 and bundle.format == "imagefolder-zip"


# ----------------------------------------------------------------------------- tar


def _tar(path: Path, build: object, gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        assert callable(build)
        build(tar)
    return path


def _special(kind: bytes, name: str, link: str = "") -> object:
    def build(tar: tarfile.TarFile) -> None:
        tar_add(tar, "cifar-10-batches-bin/batches.meta.txt", b"a\nb\n")
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        tar.addfile(info)

    return build


@pytest.mark.parametrize(
    ("kind", "name", "link"),
    [
        (tarfile.SYMTYPE, "cifar-10-batches-bin/data_batch_1.bin", "/etc/passwd"),
        (tarfile.LNKTYPE, "cifar-10-batches-bin/data_batch_2.bin", "../../etc/passwd"),
        (tarfile.CHRTYPE, "cifar-10-batches-bin/dev", ""),
        (tarfile.FIFOTYPE, "cifar-10-batches-bin/fifo", ""),
    ],
    ids=["symlink", "hardlink", "device", "fifo"],
)
@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_tar_links_and_special_files(tmp_path: Path, kind: bytes, name: str, link: str, gz: bool) -> None:
    path = _tar(tmp_path / ("c.tar.gz" if gz else "c.tar"), _special(kind, name, link), gz=gz)
    if not gz:
        with pytest.raises(DatasetError) as info, path.open("rb") as fh:
            check_tar_stream(fh, path.name, SMALL)
        assert (info.value.code, info.value.param) == ("archive_unsafe", name)
    _load_fails(path, "archive_unsafe", name, limits=DataLimits())


@pytest.mark.parametrize("bad_name", ["../x.bin", "/abs/x.bin", "a/../../x.bin"])
def test_tar_path_traversal(tmp_path: Path, bad_name: str) -> None:
    def build(tar: tarfile.TarFile) -> None:
        tar_add(tar, "cifar-10-batches-bin/batches.meta.txt", b"a\nb\n")
        tar_add(tar, bad_name, b"x")

    path = _tar(tmp_path / "c.tar", build)
    with pytest.raises(DatasetError) as info, path.open("rb") as fh:
        check_tar_stream(fh, path.name, SMALL)
    assert (info.value.code, info.value.param) == ("archive_unsafe", bad_name)
    _load_fails(path, "archive_unsafe", bad_name, limits=DataLimits())


def test_tar_member_count_and_total(tmp_path: Path) -> None:
    def many(tar: tarfile.TarFile) -> None:
        for i in range(6):
            tar_add(tar, f"cifar-10-batches-bin/data_batch_{i}.bin", b"x")

    def big(tar: tarfile.TarFile) -> None:
        tar_add(tar, "cifar-10-batches-bin/data_batch_1.bin", b"\0" * 60_000)
        tar_add(tar, "cifar-10-batches-bin/data_batch_2.bin", b"\0" * 60_000)

    for build in (many, big):
        path = _tar(tmp_path / "c.tar", build)
        with pytest.raises(DatasetError) as info, path.open("rb") as fh:
            check_tar_stream(fh, path.name, SMALL)
        assert (info.value.code, info.value.param) == ("too_large", "c.tar")
        with pytest.raises(DatasetError) as loaded:
            load_dataset(path, limits=SMALL_DATA)
        assert loaded.value.code == "too_large"


def test_tar_check_reads_headers_only(tmp_path: Path) -> None:
    """A plain tar is judged from its headers: the 5 MB member's data is seeked over, not read."""

    def build(tar: tarfile.TarFile) -> None:
        tar_add(tar, "cifar-10-batches-bin/data_batch_1.bin", b"\0" * 5_000_000)
        tar_add(tar, "cifar-10-batches-bin/batches.meta.txt", b"a\nb\n")

    path = _tar(tmp_path / "c.tar", build)

    class CountingReader(io.FileIO):
        read_bytes = 0

        def read(self, n: int | None = -1, /) -> bytes:
            data = super().read(n)
            CountingReader.read_bytes += len(data)
            return data

        def readinto(self, b: object, /) -> int:
            n = super().readinto(b)  # type: ignore[arg-type]
            CountingReader.read_bytes += n or 0
            return n or 0

    with CountingReader(path) as fh:
        summary = check_tar_stream(fh, path.name, ArchiveLimits())
    assert summary.members == 2 and summary.total_bytes == 5_000_004
    assert CountingReader.read_bytes < 100_000


# ----------------------------------------------------------------------------- upload-time limits


def test_upload_limits_match_the_loaders_defaults() -> None:
    data, model = DataLimits(), ModelLimits()
    assert (
        ArchiveLimits(
            max_members=data.max_archive_members,
            max_uncompressed_bytes=data.max_uncompressed_bytes,
            max_compression_ratio=data.max_compression_ratio,
        )
        == sniff.ARCHIVE_LIMITS
    )
    assert (
        model.max_header_bytes,
        model.max_tensors,
        model.max_params,
    ) == (sniff.MAX_HEADER_BYTES, sniff.MAX_TENSORS, sniff.MAX_ELEMENTS)


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_tar_bad_member_at_the_end_refused_before_any_member_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gz: bool
) -> None:
    records = bytes(10 * (1 + 3 * 32 * 32))

    def build(tar: tarfile.TarFile) -> None:
        tar_add(tar, "cifar-10-batches-bin/data_batch_1.bin", records)
        tar_add(tar, "cifar-10-batches-bin/test_batch.bin", records)
        link = tarfile.TarInfo("cifar-10-batches-bin/zz-link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)

    path = _tar(tmp_path / ("c.tar.gz" if gz else "c.tar"), build, gz=gz)
    read: list[str] = []
    real = tarfile.TarFile.extractfile

    def spy(self: tarfile.TarFile, member: tarfile.TarInfo | str) -> object:
        read.append(str(getattr(member, "name", member)))
        return real(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    _load_fails(path, "archive_unsafe", "cifar-10-batches-bin/zz-link", limits=DataLimits())
    assert read == []
