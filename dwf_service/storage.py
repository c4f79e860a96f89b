"""Blob storage for uploads and artifacts: a local folder (embedded mode) or any S3-compatible service (boto3)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from dwf_service.settings import Settings

CHUNK = 1 << 20
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,500}$")


class TooLarge(Exception):
    """The stream exceeded the size cap; nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than the limit of {limit} bytes")
        self.limit = limit


def _check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class _CappedHashingReader:
    """Wraps a stream: counts and hashes what is read, raising TooLarge past ``limit`` bytes."""

    def __init__(self, source: BinaryIO, limit: int | None) -> None:
        self.source, self.limit = source, limit
        self.bytes = 0
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(CHUNK if size is None or size < 0 else size)
        self.bytes += len(chunk)
        if self.limit is not None and self.bytes > self.limit:
            raise TooLarge(self.limit)
        self.digest.update(chunk)
        return chunk


class Storage(Protocol):
    """What the service needs from a blob store."""

    def put_stream(self, key: str, fileobj: BinaryIO, *, max_bytes: int | None = None) -> tuple[int, str]:
        """Store ``fileobj`` under ``key`` chunk by chunk; returns (bytes, sha256). Raises TooLarge."""
        ...

    def open(self, key: str) -> Iterator[bytes]:
        """The stored bytes, chunk by chunk."""
        ...

    def size(self, key: str) -> int:
        """Size in bytes of the object."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object (no error when missing)."""
        ...

    def ping(self) -> None:
        """Raise when the store is unreachable."""
        ...


class LocalStorage:
    """Objects as files under ``root``; writes go to a temp file, are fsynced and renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_stream(self, key: str, fileobj: BinaryIO, *, max_bytes: int | None = None) -> tuple[int, str]:
        """Store ``fileobj`` under ``key``; returns (bytes, sha256)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        reader = _CappedHashingReader(fileobj, max_bytes)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return reader.bytes, reader.digest.hexdigest()

    def open(self, key: str) -> Iterator[bytes]:
        """The stored bytes, chunk by chunk."""
        with open(self._path(key), "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def size(self, key: str) -> int:
        """Size in bytes of the object."""
        return self._path(key).stat().st_size

    def delete(self, key: str) -> None:
        """Remove the object (no error when missing)."""
        self._path(key).unlink(missing_ok=True)

    def ping(self) -> None:
        """The root folder must exist and be writable."""
        if not os.access(self.root, os.W_OK):
            raise OSError(f"{self.root} is not writable")


class S3Storage:
    """Objects in an S3 bucket (MinIO, moto, AWS…) via boto3; uploads are multipart and streamed."""

    def __init__(self, settings: Settings) -> None:
        import boto3

        self.bucket, self.prefix = settings.s3_bucket, settings.s3_prefix
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
        )
        self._settings = settings
        self._presign_client: Any = None

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def put_stream(self, key: str, fileobj: BinaryIO, *, max_bytes: int | None = None) -> tuple[int, str]:
        """Store ``fileobj`` under ``key`` (boto3 multipart upload reading our capped stream)."""
        reader = _CappedHashingReader(fileobj, max_bytes)
        try:
            self.client.upload_fileobj(reader, self.bucket, self._key(key))
        except TooLarge:
            self.delete(key)
            raise
        except Exception as exc:  # boto3 wraps errors raised by our reader
            if isinstance(exc.__cause__, TooLarge) or isinstance(exc.__context__, TooLarge):
                self.delete(key)
                raise TooLarge(max_bytes or 0) from exc
            raise
        return reader.bytes, reader.digest.hexdigest()

    def open(self, key: str) -> Iterator[bytes]:
        """The stored bytes, chunk by chunk."""
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def size(self, key: str) -> int:
        """Size in bytes of the object."""
        return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def delete(self, key: str) -> None:
        """Remove the object (no error when missing)."""
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def ping(self) -> None:
        """HEAD the bucket."""
        self.client.head_bucket(Bucket=self.bucket)

    def presigned_url(self, key: str, expires_seconds: int, filename: str) -> str:
        """A GET URL for the object, valid ``expires_seconds``, that needs no credentials and saves as ``filename``."""
        if self._presign_client is None:
            import boto3
            from botocore.config import Config

            # Presigning is local (no request): a client of its own signs with SigV4 (boto3 may pick the deprecated
            # V2 for query strings) and names the endpoint clients reach S3 at, when that differs from the service's
            # (compose: http://minio:9000 inside, http://localhost:9000 outside).
            settings = self._settings
            self._presign_client = boto3.client(
                "s3",
                endpoint_url=settings.s3_public_endpoint_url or settings.s3_endpoint_url,
                region_name=settings.s3_region,
                aws_access_key_id=settings.s3_access_key_id,
                aws_secret_access_key=settings.s3_secret_access_key,
                config=Config(signature_version="s3v4"),
            )
        params = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
        }
        url: str = self._presign_client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_seconds)
        return url


def make_storage(settings: Settings) -> Storage:
    """The blob store selected by ``settings.storage``."""
    if settings.storage == "s3":
        return S3Storage(settings)
    return LocalStorage(settings.blob_dir)


def download_to(storage: Storage, key: str, dest: Path) -> Path:
    """Copy one object to a local file (the worker materializes its inputs this way)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        for chunk in storage.open(key):
            out.write(chunk)
    return dest


def upload_file(storage: Storage, key: str, path: Path) -> tuple[int, str]:
    """Store a local file; returns (bytes, sha256)."""
    with open(path, "rb") as fh:
        return storage.put_stream(key, fh)


__all__ = ["LocalStorage", "S3Storage", "Storage", "TooLarge", "download_to", "make_storage", "upload_file"]
