"""Blob storage (streaming, size cap, sha256) and upload format sniffing."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dwf_service.sniff import sniff
from dwf_service.storage import LocalStorage, TooLarge


def test_local_storage_round_trip_with_sha256(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    payload = np.random.default_rng(0).bytes(3 * 2**20 + 17)
    size, sha = store.put_stream("files/a", io.BytesIO(payload), max_bytes=len(payload))
    assert (size, sha) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert b"".join(store.open("files/a")) == payload
    assert store.size("files/a") == len(payload)
    store.delete("files/a")
    store.delete("files/a")
    assert not (tmp_path / "files" / "a").exists()


def test_local_storage_cap_leaves_nothing_behind(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    with pytest.raises(TooLarge):
        store.put_stream("files/big", io.BytesIO(b"x" * (2**20 + 1)), max_bytes=2**20)
    assert list((tmp_path / "files").iterdir()) == []


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../../b", ""])
def test_local_storage_refuses_escaping_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        LocalStorage(tmp_path).put_stream(key, io.BytesIO(b"x"))


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x_train=np.zeros((2, 3)), y_train=np.zeros(2))
    return buf.getvalue()


def _torch_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("payload", "name", "expected"),
    [
        (b"\x08\x07\x12\x07pytorch" + b"\x00" * 20, "m.onnx", "onnx"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{}}', "w.safetensors", "safetensors"),
        (_npz(), "d.npz", "npz"),
        (_torch_zip(), "m.pt", "torch-zip"),
        (pickle.dumps({"a": 1}, protocol=4), "m.pkl", "pickle"),
        (b"label,a,b\n1,2,3\n", "d.csv", "csv"),
        (b"\x1f\x8b\x08rest", "c.tar.gz", "tar.gz"),
        (b"\xff\xfe garbage", "x.bin", "unknown"),
    ],
)
def test_sniff(payload: bytes, name: str, expected: str) -> None:
    fh = io.BytesIO(payload)
    assert sniff(fh, name, len(payload)) == expected
    assert fh.tell() == 0
