"""SDK on httpx.MockTransport: webhook fields and routes, and artifact downloads that follow the API's 307 to a
presigned blob-store URL without the API key (size and sha256 still checked)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from dwf_client import Client, DwfApiError, DwfError
from dwf_client.models import Artifact
from tests.dwf_client.test_sdk import _job

PAYLOAD = b"sparse weights" * 1000
PRESIGNED = "http://blobs.test:9000/dwf/jobs/job-1/model.onnx?X-Amz-Signature=abc&X-Amz-Expires=300"


def _client(handler: Any) -> Client:
    return Client("http://dwf.test", "key-1", transport=httpx.MockTransport(handler), sleep=lambda _s: None)


def _artifact(payload: bytes = PAYLOAD) -> Artifact:
    return Artifact(
        name="model.onnx",
        bytes=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        url="/v1/jobs/job-1/artifacts/model.onnx",
    )


def test_download_follows_the_redirect_without_the_api_key(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "dwf.test":
            return httpx.Response(307, headers={"Location": PRESIGNED, "ETag": '"x"'})
        return httpx.Response(200, content=PAYLOAD)

    with _client(handler) as client:
        path = client.download_artifact("job-1", _artifact(), tmp_path)
    assert path.read_bytes() == PAYLOAD
    api, blob = seen
    assert api.headers["authorization"] == "Bearer key-1"
    assert str(blob.url) == PRESIGNED and "authorization" not in blob.headers


def test_a_redirected_download_with_wrong_bytes_or_an_error_fails(tmp_path: Path) -> None:
    answers = iter([httpx.Response(200, content=PAYLOAD[:-1]), httpx.Response(403, content=b"<Error>expired</Error>")])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "dwf.test":
            return httpx.Response(307, headers={"Location": PRESIGNED})
        return next(answers)

    with _client(handler) as client:
        with pytest.raises(DwfError, match="expected"):
            client.download_artifact("job-1", _artifact(), tmp_path)
        with pytest.raises(DwfApiError) as info:
            client.download_artifact("job-1", _artifact(), tmp_path)
    assert info.value.status == 403 and "expired" in info.value.message
    assert not (tmp_path / "model.onnx").exists() and not list(tmp_path.glob(".*.part"))


def test_submit_sends_the_webhook_and_exposes_a_generated_secret() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        webhook = {"url": body["webhook"]["url"], "secret": None if "secret" in body["webhook"] else "whsec_new"}
        return httpx.Response(200, json=_job("validating_files", webhook=webhook))

    with _client(handler) as client:
        job = client.submit("lenet_300_100", "file-d", epochs=1, webhook="https://example.com/hook")
        assert job.webhook is not None and job.webhook.secret == "whsec_new"
        client.submit("lenet_300_100", "file-d", webhook="https://example.com/h", webhook_secret="s" * 20)
    assert bodies[0]["webhook"] == {"url": "https://example.com/hook"}
    assert bodies[1]["webhook"] == {"url": "https://example.com/h", "secret": "s" * 20}


def test_tenant_webhook_and_delivery_routes() -> None:
    state: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        if path == "/v1/webhook" and method == "PUT":
            state["url"] = json.loads(request.content)["url"]
            return httpx.Response(200, json={"object": "webhook", "url": state["url"], "secret": "whsec_gen"})
        if path == "/v1/webhook" and "url" not in state:
            return httpx.Response(404, json={"error": {"type": "x", "code": "webhook_not_found", "message": "none"}})
        if path == "/v1/webhook" and method == "GET":
            return httpx.Response(200, json={"object": "webhook", "url": state["url"], "secret": None})
        if path == "/v1/webhook" and method == "DELETE":
            state.clear()
            return httpx.Response(200, json={"id": "webhook", "object": "webhook", "deleted": True})
        assert path == "/v1/jobs/job-1/webhook_deliveries" and request.url.params["after"] == "whd-1"
        row = {
            "id": "whd-2",
            "object": "webhook_delivery",
            "job_id": "job-1",
            "event": "job.queued",
            "url": "https://example.com/hook",
            "status": "delivered",
            "attempts": 3,
            "last_status_code": 200,
            "last_error": None,
            "created_at": "2026-12-04T06:00:00.000Z",
            "next_attempt_at": None,
            "delivered_at": "2026-12-04T06:00:03.000Z",
        }
        return httpx.Response(200, json={"object": "list", "data": [row], "has_more": False})

    with _client(handler) as client:
        assert client.get_webhook() is None and client.delete_webhook() is False
        assert client.set_webhook("https://example.com/hook").secret == "whsec_gen"
        info = client.get_webhook()
        assert info is not None and info.url == "https://example.com/hook" and info.secret is None
        assert client.delete_webhook() is True and client.get_webhook() is None
        (delivery,) = client.list_webhook_deliveries("job-1", after="whd-1")
    assert (delivery.id, delivery.status, delivery.attempts, delivery.last_status_code) == (
        "whd-2",
        "delivered",
        3,
        200,
    )
