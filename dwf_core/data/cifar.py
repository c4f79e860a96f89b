"""Reader for the CIFAR-10 / CIFAR-100 binary tarballs (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz)."""

from __future__ import annotations

import posixpath
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast

import numpy as np

from dwf_core.archives import check_tar_stream
from dwf_core.data.common import Array, ByteBudget, DataLimits, RawDataset
from dwf_core.data.safety import (
    GZIP_MAGIC,
    LimitedStream,
    archive_limits,
    check_file_size,
    check_member_count,
    check_member_name,
    open_stream,
    read_text_member,
)
from dwf_core.errors import DatasetError

_IMAGE_BYTES = 3 * 32 * 32
_BATCH = re.compile(r"^data_batch_(\d+)\.bin$")
_C10_TEST = "test_batch.bin"
_C10_NAMES = "batches.meta.txt"
_C100_FILES = {"train.bin", "test.bin"}
_C100_NAMES = "fine_label_names.txt"
_C100_HINTS = _C100_FILES | {_C100_NAMES, "coarse_label_names.txt"}
# Label-name files are a few hundred bytes; anything bigger is not the CIFAR metadata.
_MAX_NAMES_BYTES = 1 << 20


def _open_tar(stream: LimitedStream, name: str) -> tarfile.TarFile:
    """Open a tar in streaming mode ("r|"): members are read in order, never seeked or extracted."""
    try:
        # Stream mode only ever calls read(); the cast stands in for typeshed's wider file protocol.
        return tarfile.open(fileobj=cast("IO[bytes]", stream), mode="r|")
    except tarfile.TarError as exc:
        raise DatasetError(
            f"{name}: not a tar archive ({exc}); expected a CIFAR binary tarball",
            code="unsupported_format",
            param=name,
        ) from exc


@contextmanager
def _tar_stream(path: Path, limits: DataLimits, budget: ByteBudget) -> Iterator[tarfile.TarFile]:
    """Open a (gzipped) tar over a size- and ratio-limited decoded stream."""
    with open_stream(path, limits, budget) as stream, _open_tar(stream, path.name) as tar:
        yield tar


def iter_members(
    path: Path, limits: DataLimits, budget: ByteBudget
) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Yield the regular-file members of a tar after checking count, names and types."""
    with _tar_stream(path, limits, budget) as tar:
        count = 0
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise DatasetError(
                    f"{path.name}: corrupt tar archive ({exc})", code="corrupt_file", param=path.name
                ) from exc
            if member is None:
                return
            count += 1
            check_member_count(count, limits, path.name)
            check_member_name(member.name, path.name)
            if member.isdir():
                continue
            if not member.isfile():
                raise DatasetError(
                    f"{path.name}: member {member.name!r} is a link or special file; expected regular files only",
                    code="archive_unsafe",
                    param=member.name,
                )
            budget.check(member.size, member.name)
            yield member, tar


def sniff_cifar(path: Path, limits: DataLimits) -> str | None:
    """Return "cifar10"/"cifar100" from the first recognisable member name, or None."""
    budget = ByteBudget(limits.max_uncompressed_bytes)
    for member, _ in iter_members(path, limits, budget):
        base = posixpath.basename(member.name)
        if _BATCH.match(base) or base in (_C10_TEST, _C10_NAMES):
            return "cifar10"
        if base in _C100_HINTS:
            return "cifar100"
    return None


def _batch_number(base: str) -> int:
    """The N of data_batch_N.bin, so batches concatenate in numeric order."""
    m = _BATCH.match(base)
    return int(m.group(1)) if m else 0


def _read(member: tarfile.TarInfo, tar: tarfile.TarFile) -> bytes:
    """Read a member's bytes through the archive's limited stream."""
    f = tar.extractfile(member)
    if f is None:  # pragma: no cover - iter_members yields regular files only
        raise DatasetError(f"{member.name}: cannot read member", code="corrupt_file", param=member.name)
    try:
        return f.read()
    except tarfile.TarError as exc:
        raise DatasetError(f"{member.name}: corrupt member ({exc})", code="corrupt_file", param=member.name) from exc


def _records(data: bytes, label_bytes: int, name: str) -> tuple[Array, Array]:
    """Split fixed-size CIFAR records into (images (N,3,32,32), last label byte)."""
    size = label_bytes + _IMAGE_BYTES
    if len(data) == 0 or len(data) % size:
        raise DatasetError(
            f"{name}: {len(data)} bytes is not a whole number of {size}-byte records "
            f"({label_bytes} label byte(s) + {_IMAGE_BYTES} pixels)",
            code="corrupt_file",
            param=name,
        )
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, size)
    # CIFAR-100 records carry (coarse, fine); the fine label is the last label byte.
    return rec[:, label_bytes:].reshape(-1, 3, 32, 32), rec[:, label_bytes - 1]


def check_tar(path: Path, limits: DataLimits) -> None:
    """Check every member header (count, paths, links, sizes) before any member's data is used.

    A plain tar is checked from its headers alone (data is seeked over); a gzipped one is streamed once
    through the size- and ratio-limited decoder without keeping any member.
    """
    with path.open("rb") as raw:
        gzipped = raw.read(2) == GZIP_MAGIC
        if not gzipped:
            check_file_size(path, limits)
            check_tar_stream(raw, path.name, archive_limits(limits))
            return
    for _member, _tar in iter_members(path, limits, ByteBudget(limits.max_uncompressed_bytes)):
        pass


def read_cifar(path: Path, limits: DataLimits, budget: ByteBudget, fmt: str | None = None) -> RawDataset:
    """Read a CIFAR-10 or CIFAR-100 binary tarball; `fmt` forces the variant when given."""
    check_tar(path, limits)
    blobs: dict[str, tuple[str, bytes]] = {}
    for member, tar in iter_members(path, limits, budget):
        base = posixpath.basename(member.name)
        wanted = _BATCH.match(base) or base in (_C10_TEST, _C10_NAMES) or base in _C100_HINTS
        if not wanted or base == "coarse_label_names.txt":
            continue
        if base in blobs:
            raise DatasetError(
                f"{path.name}: {base} appears twice ({blobs[base][0]!r} and {member.name!r}); expected one",
                code="corrupt_file",
                param=member.name,
            )
        if base.endswith(".txt") and member.size > _MAX_NAMES_BYTES:
            raise DatasetError(
                f"{member.name}: {member.size} bytes, too large for a label-name file",
                code="too_large",
                param=member.name,
            )
        blobs[base] = (member.name, _read(member, tar))

    is10 = any(_BATCH.match(b) for b in blobs) or _C10_TEST in blobs
    is100 = bool(_C100_FILES & blobs.keys())
    variant = fmt or ("cifar10" if is10 and not is100 else "cifar100" if is100 and not is10 else None)
    if variant is None:
        raise DatasetError(
            f"{path.name}: found {sorted(blobs) or 'no CIFAR members'}; expected data_batch_N.bin + "
            "test_batch.bin (CIFAR-10) or train.bin + test.bin (CIFAR-100)",
            code="missing_file" if not (is10 and is100) else "corrupt_file",
            param=path.name,
        )
    if variant == "cifar10":
        train_names = sorted((b for b in blobs if _BATCH.match(b)), key=_batch_number)
        test_name, label_bytes, num_classes, names_file = _C10_TEST, 1, 10, _C10_NAMES
    else:
        train_names = ["train.bin"] if "train.bin" in blobs else []
        test_name, label_bytes, num_classes, names_file = "test.bin", 2, 100, _C100_NAMES
    if not train_names:
        expected = "data_batch_1.bin" if variant == "cifar10" else "train.bin"
        raise DatasetError(f"{path.name}: no {expected} member", code="missing_file", param=expected)
    if test_name not in blobs:
        raise DatasetError(f"{path.name}: no {test_name} member", code="missing_file", param=test_name)

    parts = [_records(blobs[b][1], label_bytes, blobs[b][0]) for b in train_names]
    test_x, test_y = _records(blobs[test_name][1], label_bytes, blobs[test_name][0])
    raw = RawDataset(
        fmt=variant,
        x={"train": np.concatenate([p[0] for p in parts]), "test": np.ascontiguousarray(test_x)},
        y={"train": np.concatenate([p[1] for p in parts]), "test": np.ascontiguousarray(test_y)},
        num_classes=num_classes,
        params={
            "x_train": train_names[0],
            "y_train": train_names[0],
            "x_test": test_name,
            "y_test": test_name,
        },
    )
    if names_file in blobs:
        member_name, data = blobs[names_file]
        names = read_text_member(data, member_name)
        if len(names) != num_classes:
            raise DatasetError(
                f"{member_name}: lists {len(names)} class names; expected {num_classes}",
                code="corrupt_file",
                param=member_name,
            )
        raw.class_names = names
    return raw
