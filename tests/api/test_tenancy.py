"""Tenancy: a tenant sees only its own files, jobs, events and artifacts; another tenant's answer 404; keys revoke."""

from __future__ import annotations

import io
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from dwf_service import jobs
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import DEFAULT_TENANT_ID, ApiKey, Artifact, File, Job, Tenant
from tests.api.test_files import ONNX_HEAD, npz_bytes, upload
from tests.api.test_jobs import body


@pytest.fixture
def a_objects(client: TestClient, ctx: ServiceContext) -> dict[str, Any]:
    """Tenant A's model, dataset, a finished job with one artifact and a second, still validating job."""
    model = str(upload(client, ONNX_HEAD, "m.onnx", "model")["id"])
    dataset = str(upload(client, npz_bytes(), "d.npz", "dataset")["id"])
    files = {"model": model, "dataset": dataset}
    done = client.post("/v1/jobs", json=body(files)).json()["id"]
    pending = client.post("/v1/jobs", json=body(files)).json()["id"]
    key = f"jobs/{done}/metrics.json"
    size, sha = ctx.storage.put_stream(key, io.BytesIO(b"{}"))
    with session_scope(ctx.sessions) as session:
        session.add(Artifact(job_id=done, name="metrics.json", bytes=size, sha256=sha, storage_key=key))
        jobs.finish(session, done, jobs.SUCCEEDED)
    return {"files": files, "done": done, "pending": pending}


def _assert_404(resp: Any, code: str) -> None:
    assert resp.status_code == 404, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("not_found_error", code)


def test_rows_belong_to_the_callers_tenant(
    ctx: ServiceContext, a_objects: dict[str, Any], client_b: TestClient
) -> None:
    b_file = str(upload(client_b, npz_bytes(), "b.npz", "dataset")["id"])
    with ctx.sessions() as session:
        bravo = session.scalars(select(Tenant).where(Tenant.name == "bravo")).one()
        owners = {f.id: f.tenant_id for f in session.scalars(select(File))}
        job_owners = {j.tenant_id for j in session.scalars(select(Job))}
    assert owners == {
        a_objects["files"]["model"]: DEFAULT_TENANT_ID,
        a_objects["files"]["dataset"]: DEFAULT_TENANT_ID,
        b_file: bravo.id,
    }
    assert job_owners == {DEFAULT_TENANT_ID}


def test_other_tenants_files_are_404_and_unlisted(
    client: TestClient, client_b: TestClient, a_objects: dict[str, Any]
) -> None:
    dataset = a_objects["files"]["dataset"]
    _assert_404(client_b.get(f"/v1/files/{dataset}"), "file_not_found")
    _assert_404(client_b.delete(f"/v1/files/{dataset}"), "file_not_found")
    assert client_b.get("/v1/files").json() == {"object": "list", "data": [], "has_more": False}
    own = str(upload(client_b, npz_bytes(), "b.npz", "dataset")["id"])
    assert [f["id"] for f in client_b.get("/v1/files").json()["data"]] == [own]
    _assert_404(client.get(f"/v1/files/{own}"), "file_not_found")
    assert client.get(f"/v1/files/{dataset}").status_code == 200  # B's delete did nothing
    assert own not in [f["id"] for f in client.get("/v1/files?limit=100").json()["data"]]


def test_other_tenants_jobs_are_404_on_every_route(
    client: TestClient, client_b: TestClient, a_objects: dict[str, Any]
) -> None:
    done, pending = a_objects["done"], a_objects["pending"]
    for job_id in (done, pending):
        _assert_404(client_b.get(f"/v1/jobs/{job_id}"), "job_not_found")
        _assert_404(client_b.post(f"/v1/jobs/{job_id}/cancel"), "job_not_found")
        _assert_404(client_b.get(f"/v1/jobs/{job_id}/events"), "job_not_found")
        _assert_404(client_b.get(f"/v1/jobs/{job_id}/events?stream=true"), "job_not_found")
        _assert_404(client_b.get(f"/v1/jobs/{job_id}/artifacts"), "job_not_found")
        _assert_404(client_b.get(f"/v1/jobs/{job_id}/artifacts/metrics.json"), "job_not_found")
    assert client_b.get("/v1/jobs").json()["data"] == []
    assert client_b.get("/v1/jobs?status=succeeded").json()["data"] == []
    # Nothing B did reached A's jobs.
    assert client.get(f"/v1/jobs/{pending}").json()["status"] == "validating_files"
    assert {j["id"] for j in client.get("/v1/jobs").json()["data"]} == {done, pending}
    assert client.get(f"/v1/jobs/{done}/artifacts/metrics.json").content == b"{}"
    assert client.post(f"/v1/jobs/{pending}/cancel").json()["status"] == "cancelled"


def test_submitting_with_another_tenants_file_is_404(client_b: TestClient, a_objects: dict[str, Any]) -> None:
    files = a_objects["files"]
    own = {
        "model": str(upload(client_b, ONNX_HEAD, "m.onnx", "model")["id"]),
        "dataset": str(upload(client_b, npz_bytes(), "d.npz", "dataset")["id"]),
    }
    for mixed, param in (
        ({"model": files["model"], "dataset": own["dataset"]}, "model.file_id"),
        ({"model": own["model"], "dataset": files["dataset"]}, "dataset.file_id"),
    ):
        resp = client_b.post("/v1/jobs", json=body(mixed))
        _assert_404(resp, "file_not_found")
        assert resp.json()["error"]["param"] == param
    assert client_b.post("/v1/jobs", json=body(own)).status_code == 200
    assert len(client_b.get("/v1/jobs").json()["data"]) == 1


def test_idempotency_keys_are_per_tenant(client: TestClient, client_b: TestClient, a_objects: dict[str, Any]) -> None:
    own = {
        "model": str(upload(client_b, ONNX_HEAD, "m.onnx", "model")["id"]),
        "dataset": str(upload(client_b, npz_bytes(), "d.npz", "dataset")["id"]),
    }
    headers = {"Idempotency-Key": "same-key"}
    a_job = client.post("/v1/jobs", json=body(a_objects["files"]), headers=headers).json()
    b_job = client_b.post("/v1/jobs", json=body(own), headers=headers).json()
    assert a_job["id"] != b_job["id"]
    assert client_b.post("/v1/jobs", json=body(own), headers=headers).json()["id"] == b_job["id"]
    assert client.post("/v1/jobs", json=body(a_objects["files"]), headers=headers).json()["id"] == a_job["id"]


def test_revoked_key_is_401(ctx: ServiceContext, client_b: TestClient) -> None:
    assert client_b.get("/v1/files").status_code == 200
    with session_scope(ctx.sessions) as session:
        row = session.scalars(select(ApiKey).where(ApiKey.name == "b")).one()
        row.revoked = True
    resp = client_b.get("/v1/files")
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    assert resp.json() == {
        "error": {
            "type": "authentication_error",
            "code": "invalid_api_key",
            "message": "the API key is not valid",
            "param": None,
        }
    }


def test_missing_key_is_401_with_the_envelope(ctx: ServiceContext, a_objects: dict[str, Any]) -> None:
    with TestClient(create_app(ctx.settings, context=ctx, reconciler=False)) as anon:
        for resp in (anon.get(f"/v1/jobs/{a_objects['done']}"), anon.get(f"/v1/files/{a_objects['files']['model']}")):
            assert resp.status_code == 401
            assert resp.json()["error"]["code"] == "missing_api_key"
