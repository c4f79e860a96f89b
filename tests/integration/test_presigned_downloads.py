"""Artifact downloads on S3 storage (moto's S3 server): the API checks the key and the tenant, then answers 307 to a
short-lived presigned URL that serves the bytes without any credentials; the SDK follows it without the API key."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from api.app import create_app
from dwf_client import Client
from dwf_service import jobs, sweeps
from dwf_service.auth import add_key
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.migrate import upgrade_db
from dwf_service.models import DEFAULT_TENANT_ID, Artifact
from dwf_service.settings import Settings
from dwf_service.storage import S3Storage

from .conftest import s3_settings

KEY_A = "dwf_presign-a-key-0123456789abcdefghijk"
KEY_B = "dwf_presign-b-key-0123456789abcdefghijk"
REQUEST = {"model": {"name": "lenet_300_100"}, "dataset": {"file_id": "file-x"}, "method": {"epochs": 1}}
PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: more than one chunk


def _settings(tmp_path: Path, s3_endpoint: str, bucket: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"reconcile_seconds": 0, "webhook_poll_seconds": 0, "s3_presign_expiry_seconds": 120}
    return s3_settings(tmp_path / "data", s3_endpoint, bucket, **(values | overrides))


@dataclass
class Served:
    ctx: ServiceContext
    url: str
    job_id: str
    sha256: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> Iterator[Served]:
    """The API over real HTTP (uvicorn in a thread) on S3 storage, with a succeeded job of tenant A's that has one
    artifact, and a key of tenant B's."""
    settings = _settings(tmp_path, s3_endpoint, s3_bucket)
    upgrade_db(settings.database_url)
    ctx = ServiceContext.create(settings, publisher=lambda *_args: None, use_celery=False)
    key = "jobs/presign/run/model.onnx"
    size, sha = ctx.storage.put_stream(key, io.BytesIO(PAYLOAD))
    with session_scope(ctx.sessions) as session:
        add_key(session, KEY_A, name="a")
        add_key(session, KEY_B, name="b", tenant="bravo")
        job_id = jobs.create_job(session, REQUEST, file_ids={"dataset": "file-x"}).id
        session.add(Artifact(job_id=job_id, name="model.onnx", bytes=size, sha256=sha, storage_key=key))
        assert jobs.finish(session, job_id, jobs.SUCCEEDED)
    port = _free_port()
    config = uvicorn.Config(create_app(settings, context=ctx), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Served(ctx, f"http://127.0.0.1:{port}", job_id, sha)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        ctx.engine.dispose()


def test_download_redirects_to_a_presigned_url_that_needs_no_key(served: Served, s3_endpoint: str) -> None:
    path = f"{served.url}/v1/jobs/{served.job_id}/artifacts/model.onnx"
    resp = httpx.get(path, headers={"Authorization": f"Bearer {KEY_A}"})
    assert resp.status_code == 307, resp.text
    assert resp.headers["etag"] == f'"{served.sha256}"' and resp.headers["cache-control"] == "no-store"
    location = resp.headers["location"]
    assert location.startswith(s3_endpoint + "/")
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Expires"] == ["120"] and "X-Amz-Signature" in query
    blob = httpx.get(location)  # no Authorization header at all
    assert blob.status_code == 200 and blob.content == PAYLOAD
    assert hashlib.sha256(blob.content).hexdigest() == served.sha256
    assert 'filename="model.onnx"' in blob.headers["content-disposition"]
    tampered = location.replace("model.onnx", "model.onnx.x", 1)
    assert httpx.get(tampered).status_code == 403  # the signature covers the key: no other object is reachable
    # The API's own checks come first: no key 401, another tenant 404, no redirect either way.
    assert httpx.get(path).status_code == 401
    other = httpx.get(path, headers={"Authorization": f"Bearer {KEY_B}"})
    assert other.status_code == 404 and "location" not in other.headers
    unchanged = httpx.get(path, headers={"Authorization": f"Bearer {KEY_A}", "If-None-Match": f'"{served.sha256}"'})
    assert unchanged.status_code == 304


def test_the_sdk_follows_the_redirect_and_checks_the_bytes(served: Served, tmp_path: Path) -> None:
    with Client(served.url, KEY_A) as client:
        (path,) = client.download_artifacts(served.job_id, tmp_path / "out")
    assert path.read_bytes() == PAYLOAD


def test_proxying_can_be_kept(served: Served, tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    settings = _settings(tmp_path, s3_endpoint, s3_bucket, s3_presign_downloads=False)
    ctx = ServiceContext(settings, served.ctx.engine, served.ctx.sessions, S3Storage(settings))
    with TestClient(create_app(settings, context=ctx, reconciler=False)) as client:
        resp = client.get(
            f"/v1/jobs/{served.job_id}/artifacts/model.onnx", headers={"Authorization": f"Bearer {KEY_A}"}
        )
    assert resp.status_code == 200 and resp.content == PAYLOAD


def test_presigned_urls_name_the_public_endpoint(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    public = "https://downloads.example.com"
    storage = S3Storage(_settings(tmp_path, s3_endpoint, s3_bucket, s3_public_endpoint_url=public))
    url = storage.presigned_url("jobs/j/model.onnx", 60, "model.onnx")
    assert url.startswith(f"{public}/{s3_bucket}/jobs/j/model.onnx?") and "X-Amz-Expires=60" in url


def test_a_sweeps_frontier_downloads_through_a_presigned_url_too(served: Served, tmp_path: Path) -> None:
    """A sweep whose one child succeeded: finalize_sweep stores frontier.json/.png in S3; the API answers 307 to a
    presigned URL for each, after its own checks (another tenant 404), and the SDK downloads them without the key."""
    with session_scope(served.ctx.sessions) as session:
        request = {**REQUEST, "grid": {"depth": [3]}}
        sweep = sweeps.create_sweep(
            session, request, [REQUEST], file_ids={"dataset": "file-x"}, tenant_id=DEFAULT_TENANT_ID
        )
        (child,) = sweeps.children_of(session, sweep.id)
        metrics = {"test_accuracy": 0.9, "compression_ratio": 10.0, "sparsity": 0.9}
        assert jobs.finish(session, child.id, jobs.SUCCEEDED, metrics=metrics)
        sweep_id = sweep.id
    assert sweeps.finalize_sweep(served.ctx, sweep_id)
    path = f"{served.url}/v1/sweeps/{sweep_id}/artifacts/frontier.json"
    resp = httpx.get(path, headers={"Authorization": f"Bearer {KEY_A}"})
    assert resp.status_code == 307 and "X-Amz-Signature" in resp.headers["location"]
    front = httpx.get(resp.headers["location"]).json()  # no Authorization header
    assert front["compression_front"][0]["job_id"] == child.id
    assert httpx.get(path, headers={"Authorization": f"Bearer {KEY_B}"}).status_code == 404
    with Client(served.url, KEY_A) as client:
        paths = client.download_sweep_artifacts(sweep_id, tmp_path / "front")
    assert sorted(p.name for p in paths) == ["frontier.json", "frontier.png"]
    assert (tmp_path / "front" / "frontier.png").read_bytes().startswith(b"\x89PNG")
