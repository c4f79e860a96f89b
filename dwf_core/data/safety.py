"""Safe access to user files: size caps, limited (gzip) streams and archive member checks."""

from __future__ import annotations

import gzip
import stat
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from dwf_core.archives import RATIO_FLOOR_BYTES, ArchiveLimits, check_member_name, check_zip_stream
from dwf_core.data.common import ByteBudget, DataLimits
from dwf_core.errors import DatasetError

GZIP_MAGIC = b"\x1f\x8b"

__all__ = [
    "GZIP_MAGIC",
    "RATIO_FLOOR_BYTES",
    "LimitedStream",
    "archive_limits",
    "check_file_size",
    "check_member_count",
    "check_member_name",
    "check_zip",
    "open_stream",
    "open_zip",
    "ratio_cap",
    "read_text_member",
]


def archive_limits(limits: DataLimits) -> ArchiveLimits:
    """The archive bounds of a dataset's limits."""
    return ArchiveLimits(
        max_members=limits.max_archive_members,
        max_uncompressed_bytes=limits.max_uncompressed_bytes,
        max_compression_ratio=limits.max_compression_ratio,
    )


class _Readable(Protocol):
    """The part of a binary file object the limited stream wraps."""

    def read(self, n: int = -1, /) -> bytes: ...


class LimitedStream:
    """Binary reader that charges what it returns to a budget and stops compression bombs."""

    def __init__(self, raw: _Readable, budget: ByteBudget, param: str, ratio_cap: int | None) -> None:
        """Wrap `raw`; `ratio_cap` is the most bytes the compressed input may expand to (None: plain)."""
        self._raw = raw
        self._budget = budget
        self._param = param
        self._ratio_cap = ratio_cap
        self.count = 0

    def read(self, n: int = -1, /) -> bytes:
        """Read up to `n` bytes (all remaining when n < 0), enforcing the limits."""
        if n is None or n < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        try:
            data = self._raw.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(
                f"{self._param}: cannot decompress ({exc}); expected a complete gzip stream",
                code="corrupt_file",
                param=self._param,
            ) from exc
        self._charge(len(data))
        return data

    def read_exact(self, n: int, what: str) -> bytearray:
        """Read exactly `n` bytes into a fresh buffer or fail naming `what` was truncated."""
        buf = bytearray(n)
        view = memoryview(buf)
        pos = 0
        while pos < n:
            chunk = self.read(min(n - pos, 16 << 20))
            if not chunk:
                raise DatasetError(
                    f"{self._param}: truncated {what}: expected {n} bytes, found only {pos}",
                    code="corrupt_file",
                    param=self._param,
                )
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        return buf

    def _charge(self, n: int) -> None:
        """Count `n` decoded bytes against the budget and the compression-ratio cap."""
        self.count += n
        self._budget.take(n, self._param)
        if self._ratio_cap is not None and self.count > self._ratio_cap:
            raise DatasetError(
                f"{self._param}: decompresses to more than {self._ratio_cap} bytes, beyond the allowed "
                "compression ratio (DataLimits.max_compression_ratio); refusing a likely compression bomb",
                code="archive_unsafe",
                param=self._param,
            )


def check_file_size(path: Path, limits: DataLimits, param: str | None = None) -> int:
    """Return the on-disk size of `path`, failing if it exceeds DataLimits.max_file_bytes."""
    name = param or path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read file ({exc})", code="not_found", param=name) from exc
    if size > limits.max_file_bytes:
        raise DatasetError(
            f"{name}: file is {size} bytes, more than the limit of {limits.max_file_bytes} bytes "
            "(DataLimits.max_file_bytes)",
            code="too_large",
            param=name,
        )
    return size


def ratio_cap(compressed_size: int, limits: DataLimits) -> int:
    """Most bytes a compressed input of `compressed_size` bytes may decode to."""
    return max(RATIO_FLOOR_BYTES, int(limits.max_compression_ratio * max(compressed_size, 1)))


@contextmanager
def open_stream(path: Path, limits: DataLimits, budget: ByteBudget) -> Iterator[LimitedStream]:
    """Open a plain or gzip-compressed file as a limited stream of its decoded bytes."""
    size = check_file_size(path, limits)
    with path.open("rb") as raw:
        if raw.read(2) == GZIP_MAGIC:
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield LimitedStream(gz, budget, path.name, ratio_cap(size, limits))
        else:
            raw.seek(0)
            yield LimitedStream(raw, budget, path.name, None)


def check_member_count(count: int, limits: DataLimits, archive: str) -> None:
    """Fail once an archive holds more members than DataLimits.max_archive_members."""
    if count > limits.max_archive_members:
        raise DatasetError(
            f"{archive}: archive has more than {limits.max_archive_members} members (DataLimits.max_archive_members)",
            code="too_large",
            param=archive,
        )


def open_zip(path: Path, limits: DataLimits) -> zipfile.ZipFile:
    """Open a zip file after checking its central directory entry by entry (count, paths, types, ratio, total).

    The directory is walked straight from the file first, so a forged one (millions of entries, links,
    `..` paths, bombs) is refused before zipfile builds a ZipInfo per entry or any member is read.
    """
    size = check_file_size(path, limits)
    try:
        with path.open("rb") as fh:
            check_zip_stream(fh, size, path.name, archive_limits(limits))
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DatasetError(
            f"{path.name}: not a readable zip archive ({exc})", code="corrupt_file", param=path.name
        ) from exc


def check_zip(zf: zipfile.ZipFile, limits: DataLimits, archive: str) -> list[zipfile.ZipInfo]:
    """Check every member's metadata (count, path, type, ratio, total size) before reading any data."""
    infos = zf.infolist()
    check_member_count(len(infos), limits, archive)
    total = 0
    for info in infos:
        check_member_name(info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(
                f"{archive}: member {info.filename!r} is a symbolic link; expected regular files only",
                code="archive_unsafe",
                param=info.filename,
            )
        if info.flag_bits & 0x1:
            raise DatasetError(
                f"{archive}: member {info.filename!r} is encrypted; expected an unencrypted archive",
                code="unsupported_format",
                param=info.filename,
            )
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > limits.max_compression_ratio * max(
            info.compress_size, 1
        ):
            raise DatasetError(
                f"{archive}: member {info.filename!r} expands from {info.compress_size} to "
                f"{info.file_size} bytes, a ratio above {limits.max_compression_ratio:g} "
                "(DataLimits.max_compression_ratio); refusing a likely zip bomb",
                code="archive_unsafe",
                param=info.filename,
            )
        total += info.file_size
    if total > limits.max_uncompressed_bytes:
        raise DatasetError(
            f"{archive}: members total {total} bytes uncompressed, more than the limit of "
            f"{limits.max_uncompressed_bytes} bytes (DataLimits.max_uncompressed_bytes)",
            code="too_large",
            param=archive,
        )
    return infos


def read_text_member(data: bytes, param: str) -> list[str]:
    """Decode a small UTF-8 text member into its non-empty stripped lines."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{param}: not UTF-8 text ({exc})", code="corrupt_file", param=param) from exc
    return [line.strip() for line in text.splitlines() if line.strip()]
