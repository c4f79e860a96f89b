"""/v1/files: upload with format detection, cap and sha256; list, get, delete (409 while in use)."""

from __future__ import annotations

import hashlib
import io
import pickle

import numpy as np
from fastapi.testclient import TestClient

ONNX_HEAD = b"\x08\x07\x12\x07pytorch" + b"\x00" * 64


def npz_bytes(n: int = 4) -> bytes:
    """A tiny dataset file."""
    buf = io.BytesIO()
    np.savez(buf, x_train=np.zeros((n, 3), np.float32), y_train=np.zeros(n, np.int64))
    return buf.getvalue()


def upload(client: TestClient, payload: bytes, name: str, purpose: str) -> dict[str, object]:
    """POST /v1/files and return the JSON body (asserting 200)."""
    resp = client.post("/v1/files", files={"file": (name, payload)}, data={"purpose": purpose})
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


def test_upload_detects_format_and_hashes(client: TestClient) -> None:
    payload = npz_bytes()
    body = upload(client, payload, "d.npz", "dataset")
    assert body["id"] and str(body["id"]).startswith("file-")
    assert (body["bytes"], body["sha256"], body["format"]) == (len(payload), hashlib.sha256(payload).hexdigest(), "npz")
    assert client.get(f"/v1/files/{body['id']}").json() == body
    assert [f["id"] for f in client.get("/v1/files?purpose=dataset").json()["data"]] == [body["id"]]
    assert client.get("/v1/files?purpose=model").json()["data"] == []


def test_unsafe_and_wrong_formats_are_refused(client: TestClient) -> None:
    resp = client.post("/v1/files", files={"file": ("m.pkl", pickle.dumps([1]))}, data={"purpose": "model"})
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "unsafe_format"
    resp = client.post("/v1/files", files={"file": ("d.npz", npz_bytes())}, data={"purpose": "model"})
    assert resp.status_code == 415
    assert resp.json()["error"] | {"message": ""} == {
        "type": "invalid_request_error",
        "code": "unsupported_format",
        "message": "",
        "param": "file",
    }


def test_upload_over_the_cap_is_413_and_not_stored(client: TestClient) -> None:
    big = ONNX_HEAD + b"\x00" * (3 * 2**20)
    resp = client.post("/v1/files", files={"file": ("m.onnx", big)}, data={"purpose": "model"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_large"
    assert client.get("/v1/files").json()["data"] == []


def test_chunked_upload_over_the_cap_is_413(client: TestClient) -> None:
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nmodel\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n\r\n'
    ).encode()

    def body() -> object:
        yield head + ONNX_HEAD
        for _ in range(40):
            yield b"\x00" * 2**16
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = client.post(
        "/v1/files", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert resp.status_code == 413
    assert client.get("/v1/files").json()["data"] == []


def test_pagination(client: TestClient) -> None:
    ids = [upload(client, npz_bytes(i + 2), f"d{i}.npz", "dataset")["id"] for i in range(3)]
    page1 = client.get("/v1/files?limit=2").json()
    assert [f["id"] for f in page1["data"]] == ids[::-1][:2] and page1["has_more"]
    page2 = client.get(f"/v1/files?limit=2&after={page1['data'][-1]['id']}").json()
    assert [f["id"] for f in page2["data"]] == [ids[0]] and not page2["has_more"]


def test_delete_is_refused_while_an_active_job_uses_the_file(client: TestClient) -> None:
    data = upload(client, npz_bytes(), "d.npz", "dataset")
    job = client.post(
        "/v1/jobs",
        json={"model": {"name": "lenet_300_100"}, "dataset": {"file_id": data["id"]}, "method": {"epochs": 1}},
    ).json()
    resp = client.delete(f"/v1/files/{data['id']}")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "file_in_use"
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/files/{data['id']}").json() == {"id": data["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{data['id']}").status_code == 404
