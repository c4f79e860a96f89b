"""S3Storage against moto's in-process S3 mock (the integration tier runs it against moto's server mode)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from dwf_service.settings import Settings
from dwf_service.storage import S3Storage, TooLarge

moto = pytest.importorskip("moto")


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Storage]:
    """A bucket in moto's mock."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    with moto.mock_aws():
        settings = Settings(data_dir=tmp_path, storage="s3", s3_bucket="dwf-test", s3_prefix="p/")
        store = S3Storage(settings)
        store.client.create_bucket(Bucket="dwf-test")
        yield store


def test_round_trip_multipart(s3: S3Storage) -> None:
    payload = bytes(range(256)) * (40 * 2**10)  # 10 MiB: more than one multipart chunk
    size, sha = s3.put_stream("files/a", io.BytesIO(payload), max_bytes=len(payload))
    assert (size, sha) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert s3.size("files/a") == len(payload)
    assert b"".join(s3.open("files/a")) == payload
    s3.ping()
    s3.delete("files/a")
    assert s3.client.list_objects_v2(Bucket="dwf-test").get("KeyCount") == 0


def test_cap_stores_nothing(s3: S3Storage) -> None:
    with pytest.raises(TooLarge):
        s3.put_stream("files/big", io.BytesIO(b"x" * (9 * 2**20)), max_bytes=2**20)
    assert s3.client.list_objects_v2(Bucket="dwf-test").get("KeyCount") == 0
