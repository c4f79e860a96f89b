"""Per-tenant quotas: unfinished jobs, stored bytes, epochs × examples → 429 with Retry-After; examples counting."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import create_app
from dwf_service.auth import add_key
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Artifact, Tenant
from dwf_service.quotas import count_examples
from tests.api.test_files import ONNX_HEAD, npz_bytes, upload
from tests.api.test_jobs import body

KEY_B = "dwf_quota-b-key-0123456789abcdefghijklm"


@pytest.fixture
def files(client: TestClient) -> dict[str, Any]:
    """A model and a 4-example dataset of the default tenant."""
    return {
        "model": upload(client, ONNX_HEAD, "m.onnx", "model")["id"],
        "dataset": upload(client, npz_bytes(4), "d.npz", "dataset")["id"],
    }


@pytest.fixture
def client_b(ctx: ServiceContext) -> Iterator[TestClient]:
    """A client of the tenant "bravo"."""
    with session_scope(ctx.sessions) as session:
        add_key(session, KEY_B, tenant="bravo")
    with TestClient(
        create_app(ctx.settings, context=ctx, reconciler=False), headers={"Authorization": f"Bearer {KEY_B}"}
    ) as test_client:
        yield test_client


def _assert_429(resp: Any, code: str, retry_after: int) -> dict[str, Any]:
    assert resp.status_code == 429, resp.text
    assert resp.headers["retry-after"] == str(retry_after)
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert (error["type"], error["code"]) == ("rate_limit_error", code)
    return error


def test_unfinished_jobs_are_capped_per_tenant(
    ctx: ServiceContext, client: TestClient, client_b: TestClient, files: dict[str, Any]
) -> None:
    ctx.settings.quota_max_active_jobs = 2
    ctx.settings.quota_retry_after_seconds = 17
    _, second = (client.post("/v1/jobs", json=body(files)).json()["id"] for _ in range(2))
    error = _assert_429(client.post("/v1/jobs", json=body(files)), "active_jobs_quota_exceeded", 17)
    assert "2 unfinished jobs" in error["message"]
    assert len(client.get("/v1/jobs").json()["data"]) == 2  # the refused job was not created
    # Another tenant has its own allowance.
    b_files = {
        "model": upload(client_b, ONNX_HEAD, "m.onnx", "model")["id"],
        "dataset": upload(client_b, npz_bytes(4), "d.npz", "dataset")["id"],
    }
    assert client_b.post("/v1/jobs", json=body(b_files)).status_code == 200
    # A finished (here: cancelled) job frees its slot.
    assert client.post(f"/v1/jobs/{second}/cancel").json()["status"] == "cancelled"
    assert client.post("/v1/jobs", json=body(files)).status_code == 200
    _assert_429(client.post("/v1/jobs", json=body(files)), "active_jobs_quota_exceeded", 17)


def test_idempotent_replay_is_not_refused(ctx: ServiceContext, client: TestClient, files: dict[str, Any]) -> None:
    ctx.settings.quota_max_active_jobs = 1
    headers = {"Idempotency-Key": "once"}
    first = client.post("/v1/jobs", json=body(files), headers=headers).json()
    assert client.post("/v1/jobs", json=body(files), headers=headers).json() == first
    _assert_429(client.post("/v1/jobs", json=body(files)), "active_jobs_quota_exceeded", 60)


def test_a_tenants_own_limit_overrides_the_default(
    ctx: ServiceContext, client: TestClient, client_b: TestClient, files: dict[str, Any]
) -> None:
    with session_scope(ctx.sessions) as session:
        session.execute(update(Tenant).where(Tenant.name == "bravo").values(max_active_jobs=1))
    b_files = {
        "model": upload(client_b, ONNX_HEAD, "m.onnx", "model")["id"],
        "dataset": upload(client_b, npz_bytes(4), "d.npz", "dataset")["id"],
    }
    assert client_b.post("/v1/jobs", json=body(b_files)).status_code == 200
    _assert_429(client_b.post("/v1/jobs", json=body(b_files)), "active_jobs_quota_exceeded", 60)
    for _ in range(3):  # the default tenant keeps the default limit (10)
        assert client.post("/v1/jobs", json=body(files)).status_code == 200
    with session_scope(ctx.sessions) as session:  # 0 = unlimited
        session.execute(update(Tenant).where(Tenant.name == "bravo").values(max_active_jobs=0))
    assert client_b.post("/v1/jobs", json=body(b_files)).status_code == 200


def test_stored_bytes_count_uploads_and_artifacts(
    ctx: ServiceContext, client: TestClient, client_b: TestClient, files: dict[str, Any]
) -> None:
    used = sum(f["bytes"] for f in client.get("/v1/files").json()["data"])
    ctx.settings.quota_max_stored_bytes = used + 1000
    blobs_before = sorted(p.name for p in (ctx.settings.blob_dir / "files").iterdir())
    error = _assert_429(
        client.post(
            "/v1/files", files={"file": ("big.csv", b"label,a\n" + b"1,2\n" * 300)}, data={"purpose": "dataset"}
        ),
        "storage_quota_exceeded",
        60,
    )
    assert error["param"] == "file" and str(used + 8 + 1200) in error["message"]
    assert sorted(p.name for p in (ctx.settings.blob_dir / "files").iterdir()) == blobs_before  # nothing kept
    assert len(client.get("/v1/files").json()["data"]) == 2
    small = upload(client, b"label,a\n" + b"1,2\n" * 100, "small.csv", "dataset")  # 408 bytes fit
    # Artifacts of the tenant's jobs count too.
    job_id = client.post("/v1/jobs", json=body(files)).json()["id"]
    with session_scope(ctx.sessions) as session:
        session.add(Artifact(job_id=job_id, name="model.onnx", bytes=500, sha256="0" * 64, storage_key="jobs/x"))
    _assert_429(
        client.post("/v1/files", files={"file": ("s.csv", b"label,a\n" + b"1,2\n" * 30)}, data={"purpose": "dataset"}),
        "storage_quota_exceeded",
        60,
    )
    # Deleting a file frees space; another tenant's usage is its own.
    assert client.delete(f"/v1/files/{small['id']}").status_code == 200
    assert upload(client, b"label,a\n" + b"1,2\n" * 30, "s.csv", "dataset")["bytes"] == 128
    assert upload(client_b, b"label,a\n" + b"1,2\n" * 200, "b.csv", "dataset")["bytes"] == 808


def test_epochs_times_examples_is_capped(ctx: ServiceContext, client: TestClient, files: dict[str, Any]) -> None:
    ctx.settings.quota_max_epoch_examples = 40  # the dataset has 4 training examples
    assert client.post("/v1/jobs", json=body(files, epochs=10)).status_code == 200
    error = _assert_429(client.post("/v1/jobs", json=body(files, epochs=11)), "epoch_examples_quota_exceeded", 60)
    assert error["param"] == "method.epochs" and "11 epochs × 4 training examples = 44" in error["message"]
    with session_scope(ctx.sessions) as session:
        session.execute(update(Tenant).values(max_epoch_examples=44))
    assert client.post("/v1/jobs", json=body(files, epochs=11)).status_code == 200


def test_uncounted_datasets_skip_the_epoch_examples_quota(ctx: ServiceContext, client: TestClient) -> None:
    ctx.settings.quota_max_epoch_examples = 1
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    dataset = upload(client, buf.getvalue(), "cifar-10-python.tar.gz", "dataset")
    files = {"model": upload(client, ONNX_HEAD, "m.onnx", "model")["id"], "dataset": dataset["id"]}
    assert client.post("/v1/jobs", json=body(files, epochs=5)).status_code == 200


def _safetensors(n: int) -> bytes:
    header = json.dumps(
        {
            "x_train": {"dtype": "F32", "shape": [n, 2], "data_offsets": [0, 8 * n]},
            "y_train": {"dtype": "I64", "shape": [n], "data_offsets": [8 * n, 16 * n]},
        }
    ).encode()
    return struct.pack("<Q", len(header)) + header + bytes(16 * n)


def _image_zip(layout: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in layout:
            zf.writestr(name, b"\x89PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("payload", "fmt", "expected"),
    [
        (npz_bytes(7), "npz", 7),
        (_safetensors(5), "safetensors", 5),
        (b"label,a,split\n1,2,train\n0,1,test\n1,1,train", "csv", 3),
        (b"label,a\n" + b"1,2\n" * 9, "csv", 9),
        (_image_zip(["train/cat/1.png", "train/dog/2.png", "test/cat/3.png", "train/"]), "zip", 2),
        (_image_zip(["cat/1.png", "dog/2.jpg", "dog/notes.txt"]), "zip", 2),
        (b"\x1f\x8b" + bytes(30), "tar.gz", None),
        (b"PK\x03\x04 broken", "npz", None),
        (b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json", "safetensors", None),
    ],
)
def test_count_examples(payload: bytes, fmt: str, expected: int | None) -> None:
    fh = io.BytesIO(payload)
    assert count_examples(fh, fmt) == expected
    assert fh.tell() == 0


def test_count_examples_of_an_npz_without_y_train_is_unknown() -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((3, 2)))
    assert count_examples(buf, "npz") is None
