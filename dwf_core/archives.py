"""Archive checks that run before anything is extracted or decoded, in constant memory and without torch.

Shared by the dataset readers (dwf_core.data) and the service's upload sniffing (dwf_service.sniff), which
must not import torch. A zip is judged from its central directory, walked entry by entry straight from the
file (``zipfile.ZipFile`` would first build one ZipInfo per entry, so a forged directory of millions of
entries would cost gigabytes before any limit could be checked); a plain tar is judged from its member
headers, seeking over the data. Every violation is a DatasetError with a stable code:

- ``archive_unsafe``: a member path that escapes (absolute, drive letter, ``..``, NUL), a link or special
  file, or a compression ratio above the limit (a likely zip bomb);
- ``too_large``: more members, or more uncompressed bytes in total, than allowed;
- ``unsupported_format``: an encrypted member, or a file that is not a tar at all;
- ``corrupt_file``: a directory or header that does not parse.
"""

from __future__ import annotations

import re
import stat
import struct
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

from dwf_core.errors import DatasetError

# Members that decode to less than this are never called bombs: a few KiB of repeated bytes compress far
# beyond any sane ratio, yet cost nothing to decode.
RATIO_FLOOR_BYTES = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (22 bytes)
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # one central directory header (46 bytes)
_CENTRAL_SIG = b"PK\x01\x02"
_MAX_COMMENT = 0xFFFF
_U32_MAX = 0xFFFFFFFF
_ZIP64_EXTRA_ID = 0x0001


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds an archive must respect (DataLimits carries the same numbers for dataset loading)."""

    max_members: int = 200_000
    max_uncompressed_bytes: int = 4 * 1024**3
    max_compression_ratio: float = 200.0


@dataclass
class ArchiveSummary:
    """What a passed check learnt: member count, total uncompressed bytes, member names (files and dirs)."""

    members: int = 0
    total_bytes: int = 0
    names: list[str] = field(default_factory=list)


def check_member_name(name: str, archive: str) -> None:
    """Refuse archive member names that could escape a folder (absolute, drive letter, `..`, NUL)."""
    norm = name.replace("\\", "/")
    if not norm or norm.startswith("/") or _DRIVE.match(norm) or "\x00" in norm or ".." in norm.split("/"):
        raise DatasetError(
            f"{archive}: member {name!r} has an unsafe path (absolute, drive letter or '..'); "
            "expected relative paths inside the archive",
            code="archive_unsafe",
            param=name,
        )


def _too_many(archive: str, limits: ArchiveLimits) -> DatasetError:
    return DatasetError(
        f"{archive}: archive has more than {limits.max_members} members (max_archive_members)",
        code="too_large",
        param=archive,
    )


def _corrupt(archive: str, why: str) -> DatasetError:
    return DatasetError(f"{archive}: not a readable zip archive ({why})", code="corrupt_file", param=archive)


def _check_total(total: int, archive: str, limits: ArchiveLimits) -> None:
    if total > limits.max_uncompressed_bytes:
        raise DatasetError(
            f"{archive}: members total more than {limits.max_uncompressed_bytes} bytes uncompressed "
            "(max_uncompressed_bytes)",
            code="too_large",
            param=archive,
        )


def _check_ratio(name: str, compressed: int, size: int, archive: str, limits: ArchiveLimits) -> None:
    if size > RATIO_FLOOR_BYTES and size > limits.max_compression_ratio * max(compressed, 1):
        raise DatasetError(
            f"{archive}: member {name!r} expands from {compressed} to {size} bytes, a ratio above "
            f"{limits.max_compression_ratio:g} (max_compression_ratio); refusing a likely zip bomb",
            code="archive_unsafe",
            param=name,
        )


def _locate_central_directory(fh: BinaryIO, size: int, archive: str) -> tuple[int, int, int]:
    """(start, byte size, declared entry count) of the central directory, from the end records."""
    tail_len = min(size, _EOCD.size + _MAX_COMMENT)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(_EOCD_SIG)
    if pos < 0 or pos + _EOCD.size > len(tail):
        raise _corrupt(archive, "no end of central directory record")
    eocd_at = size - tail_len + pos
    _sig, _disk, _cd_disk, _n_disk, entries, cd_size, _cd_offset, _comment = _EOCD.unpack_from(tail, pos)
    end = eocd_at
    if eocd_at >= _ZIP64_LOCATOR.size:
        fh.seek(eocd_at - _ZIP64_LOCATOR.size)
        locator = fh.read(_ZIP64_LOCATOR.size)
        if locator[:4] == _ZIP64_LOCATOR_SIG:
            end = eocd_at - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size
            if end < 0:
                raise _corrupt(archive, "truncated zip64 end record")
            fh.seek(end)
            record = fh.read(_ZIP64_EOCD.size)
            if len(record) != _ZIP64_EOCD.size or record[:4] != _ZIP64_EOCD_SIG:
                raise _corrupt(archive, "bad zip64 end record")
            _s, _sz, _v1, _v2, _d, _cd, _nd, entries, cd_size, _off = _ZIP64_EOCD.unpack(record)
    # Like zipfile, read the directory from right before the end records (this also covers prepended data).
    start = end - cd_size
    if start < 0:
        raise _corrupt(archive, f"central directory of {cd_size} bytes does not fit before its end record")
    return start, cd_size, entries


def _zip64_sizes(extra: bytes, compressed: int, size: int) -> tuple[int, int]:
    """Replace 0xFFFFFFFF sizes by the 64-bit values of the zip64 extra field (uncompressed comes first)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if tag == _ZIP64_EXTRA_ID:
            values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            if size == _U32_MAX and values:
                size = values.pop(0)
            if compressed == _U32_MAX and values:
                compressed = values.pop(0)
            break
        pos += 4 + length
    return compressed, size


def check_zip_stream(fh: BinaryIO, size: int, archive: str, limits: ArchiveLimits) -> ArchiveSummary:
    """Check a zip's central directory entry by entry, before any member is read or ZipInfo built.

    Args:
        fh: The archive, seekable; its position is undefined afterwards.
        size: The archive's size in bytes.
        archive: The name used in error messages.
        limits: Member count, total uncompressed bytes and per-member compression ratio bounds.

    Returns:
        The member count, total declared uncompressed bytes and member names.

    Raises:
        DatasetError: ``too_large``, ``archive_unsafe``, ``unsupported_format`` (encrypted) or ``corrupt_file``.
    """
    start, cd_size, declared = _locate_central_directory(fh, size, archive)
    if declared > limits.max_members:
        raise _too_many(archive, limits)
    summary = ArchiveSummary()
    fh.seek(start)
    pos = 0
    while pos < cd_size:
        head = fh.read(_CENTRAL.size)
        if len(head) != _CENTRAL.size or head[:4] != _CENTRAL_SIG:
            raise _corrupt(archive, f"bad central directory entry at byte {start + pos}")
        fields = _CENTRAL.unpack(head)
        flags, compressed, file_size = fields[5], fields[10], fields[11]
        name_len, extra_len, comment_len, external_attr = fields[12], fields[13], fields[14], fields[17]
        raw_name = fh.read(name_len)
        extra = fh.read(extra_len)
        fh.seek(comment_len, 1)
        pos += _CENTRAL.size + name_len + extra_len + comment_len
        if len(raw_name) != name_len or len(extra) != extra_len or pos > cd_size:
            raise _corrupt(archive, "truncated central directory")
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
        summary.members += 1
        if summary.members > limits.max_members:
            raise _too_many(archive, limits)
        check_member_name(name, archive)
        # Unix file type bits (0 when the tool wrote permissions only, as zipfile.writestr does).
        file_type = stat.S_IFMT(external_attr >> 16)
        if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DatasetError(
                f"{archive}: member {name!r} is a symbolic link or special file; expected regular files only",
                code="archive_unsafe",
                param=name,
            )
        if flags & 0x1:
            raise DatasetError(
                f"{archive}: member {name!r} is encrypted; expected an unencrypted archive",
                code="unsupported_format",
                param=name,
            )
        if _U32_MAX in (compressed, file_size):
            compressed, file_size = _zip64_sizes(extra, compressed, file_size)
        _check_ratio(name, compressed, file_size, archive, limits)
        summary.total_bytes += file_size
        _check_total(summary.total_bytes, archive, limits)
        summary.names.append(name)
    return summary


def _open_tar(fh: BinaryIO, archive: str) -> tarfile.TarFile:
    fh.seek(0)
    try:
        return tarfile.open(fileobj=fh, mode="r:")
    except tarfile.TarError as exc:
        raise DatasetError(f"{archive}: not a tar archive ({exc})", code="unsupported_format", param=archive) from exc


def check_tar_stream(fh: BinaryIO, archive: str, limits: ArchiveLimits) -> ArchiveSummary:
    """Check an uncompressed, seekable tar from its member headers (data is seeked over, never read).

    Raises:
        DatasetError: ``too_large``, ``archive_unsafe`` (unsafe path, link, device, fifo) or ``corrupt_file``.
    """
    summary = ArchiveSummary()
    with _open_tar(fh, archive) as tar:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise DatasetError(
                    f"{archive}: corrupt tar archive ({exc})", code="corrupt_file", param=archive
                ) from exc
            if member is None:
                return summary
            vars(tar)["members"].clear()  # headers are checked one at a time: keep memory constant
            summary.members += 1
            if summary.members > limits.max_members:
                raise _too_many(archive, limits)
            check_member_name(member.name, archive)
            if not (member.isfile() or member.isdir()):
                raise DatasetError(
                    f"{archive}: member {member.name!r} is a link or special file; expected regular files only",
                    code="archive_unsafe",
                    param=member.name,
                )
            summary.total_bytes += member.size
            _check_total(summary.total_bytes, archive, limits)
            summary.names.append(member.name)
