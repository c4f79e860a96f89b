"""/v1/jobs: create (validation, idempotency, enqueue after commit), list, get, cancel, events, artifacts."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient

from api.schemas import MethodName
from dwf_service import jobs
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Artifact, Job
from dwf_service.queue import TASK_VALIDATE, Message


def body(files: dict[str, Any], **method: Any) -> dict[str, Any]:
    """A valid job request."""
    return {
        "model": {"file_id": files["model"]},
        "dataset": {"file_id": files["dataset"]},
        "method": {"type": "dwf", "depth": 3, "epochs": 2, **method},
    }


def test_create_returns_the_job_and_enqueues_validation(
    client: TestClient, files: dict[str, Any], published: list[Message]
) -> None:
    resp = client.post("/v1/jobs", json=body(files, lam=1e-4))
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["id"].startswith("job-") and job["status"] == "validating_files"
    assert job["method"]["lam"] == 1e-4 and job["progress"]["epochs"] == 2
    assert job["created_at"].endswith("Z") and job["urls"]["cancel"] == f"/v1/jobs/{job['id']}/cancel"
    assert published == [Message(TASK_VALIDATE, job["id"])]
    assert client.get(f"/v1/jobs/{job['id']}").json() == job


@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        ({"method": {"depth": 3, "epochs": 2, "bogus": 1}}, "method.bogus", "unknown_field"),
        ({"method": {"depth": 99, "epochs": 2}}, "method.depth", "invalid_value"),
        ({"method": {"epochs": 0}}, "method.epochs", "invalid_value"),
        ({"method": {"epochs": 1, "threshold": -1}}, "method.threshold", "invalid_value"),
        ({"method": {"epochs": 1, "lam": 1e-4, "target_sparsity": 0.9}}, "method.target_sparsity", "invalid_value"),
        ({"method": {"epochs": 1, "target_sparsity": 1.0}}, "method.target_sparsity", "invalid_value"),
        ({"extra": True}, "extra", "unknown_field"),
        ({"model": {"name": "lenet5", "file_id": "x"}}, "model", "invalid_value"),
        ({"weights_file_id": "file-w"}, "weights_file_id", "weights_with_onnx"),
        ({"method": {"type": "gmp", "epochs": 2}}, "method", "invalid_value"),
        ({"method": {"type": "obd", "epochs": 2, "target_sparsity": 0.9}}, "method.type", "invalid_value"),
        ({"method": {"epochs": 2, "frontier": [10, 1]}}, "method.frontier.1", "invalid_value"),
        ({"method": {"epochs": 2, "finetune_epochs": -1}}, "method.finetune_epochs", "invalid_value"),
        ({"method": {"epochs": 2, "dense_epochs": -1}}, "method.dense_epochs", "invalid_value"),
        (
            {"method": {"type": "gmp", "epochs": 2, "target_sparsity": 0.9, "dense_epochs": 2}},
            "method",
            "invalid_value",
        ),
    ],
)
def test_bad_requests_are_422_naming_the_field(
    client: TestClient, files: dict[str, Any], change: dict[str, Any], param: str, code: str
) -> None:
    resp = client.post("/v1/jobs", json=body(files) | change)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)


def test_target_sparsity_is_accepted_and_stored(
    client: TestClient, files: dict[str, Any], ctx: ServiceContext, published: list[Message]
) -> None:
    resp = client.post("/v1/jobs", json=body(files, target_sparsity=0.95))
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["method"]["target_sparsity"] == 0.95 and job["method"].get("lam") is None
    assert published == [Message(TASK_VALIDATE, job["id"])]
    with ctx.sessions() as session:
        stored = session.get(Job, job["id"])
        assert stored is not None and stored.request["method"]["target_sparsity"] == 0.95


def test_baselines_frontier_and_finetune_are_accepted_and_reach_the_training_config(
    client: TestClient, files: dict[str, Any], ctx: ServiceContext
) -> None:
    from dwf_core.baselines import METHODS
    from dwf_service.runner import _spec

    assert set(get_args(MethodName)) == set(METHODS)
    resp = client.post(
        "/v1/jobs", json=body(files, type="gmp", target_sparsity=0.99, frontier=[200, 500], finetune_epochs=1)
    )
    assert resp.status_code == 200, resp.text
    with ctx.sessions() as session:
        job = session.get(Job, resp.json()["id"])
        assert job is not None
        spec = _spec(ctx, job, {"model": Path("m.onnx"), "dataset": Path("d.npz")}, Path("out"), None)
    cfg = spec.train
    assert (cfg.method, cfg.target_sparsity, cfg.frontier, cfg.finetune_epochs) == ("gmp", 0.99, [200, 500], 1)


def test_depth_left_out_follows_the_target(client: TestClient, files: dict[str, Any], ctx: ServiceContext) -> None:
    from dwf_service.runner import _spec

    request = body(files, target_sparsity=0.998)
    del request["method"]["depth"]
    resp = client.post("/v1/jobs", json=request)
    assert resp.status_code == 200, resp.text
    assert "depth" not in resp.json()["method"]  # the job shows what was asked; metrics.json the depth used
    with ctx.sessions() as session:
        job = session.get(Job, resp.json()["id"])
        assert job is not None
        spec = _spec(ctx, job, {"model": Path("m.onnx"), "dataset": Path("d.npz")}, Path("out"), None)
    assert spec.train.depth is None and spec.train.resolved().depth == 4


def test_dense_epochs_reach_the_run(client: TestClient, files: dict[str, Any], ctx: ServiceContext) -> None:
    from dwf_service.runner import _spec

    resp = client.post("/v1/jobs", json=body(files, target_sparsity=0.99, dense_epochs=3))
    assert resp.status_code == 200, resp.text
    with ctx.sessions() as session:
        job = session.get(Job, resp.json()["id"])
        assert job is not None
        spec = _spec(ctx, job, {"model": Path("m.onnx"), "dataset": Path("d.npz")}, Path("out"), None)
    assert spec.train.dense_epochs == 3


def test_unknown_file_is_404_naming_the_field(client: TestClient, files: dict[str, Any]) -> None:
    resp = client.post("/v1/jobs", json=body(files) | {"dataset": {"file_id": "file-nope"}})
    assert resp.status_code == 404, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("not_found_error", "file_not_found", "dataset.file_id")


def test_dataset_must_have_dataset_purpose(client: TestClient, files: dict[str, Any]) -> None:
    req = body(files) | {"dataset": {"file_id": files["model"]}}
    assert client.post("/v1/jobs", json=req).json()["error"]["code"] == "wrong_purpose"


def test_idempotency_key(client: TestClient, files: dict[str, Any], published: list[Message]) -> None:
    headers = {"Idempotency-Key": "abc"}
    first = client.post("/v1/jobs", json=body(files), headers=headers).json()
    again = client.post("/v1/jobs", json=body(files), headers=headers).json()
    assert again == first and len(published) == 1
    resp = client.post("/v1/jobs", json=body(files, epochs=3), headers=headers)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "idempotency_key_reused"


def _age(ctx: ServiceContext, job_id: str, seconds: float) -> None:
    """Make the job ``seconds`` older (its key's lifetime runs from the job's creation)."""
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.created_at -= timedelta(seconds=seconds)


def test_idempotency_key_expires(
    ctx: ServiceContext, client: TestClient, files: dict[str, Any], published: list[Message]
) -> None:
    ctx.settings.idempotency_key_ttl_seconds = 60
    headers = {"Idempotency-Key": "daily-run"}
    first = client.post("/v1/jobs", json=body(files), headers=headers).json()
    _age(ctx, first["id"], 59)  # within the lifetime: the same job, and another body is still a conflict
    assert client.post("/v1/jobs", json=body(files), headers=headers).json()["id"] == first["id"]
    assert client.post("/v1/jobs", json=body(files, epochs=3), headers=headers).status_code == 409
    _age(ctx, first["id"], 2)  # 61 s old: the key is new again
    second = client.post("/v1/jobs", json=body(files), headers=headers)
    assert second.status_code == 200, second.text
    assert second.json()["id"] != first["id"] and len(published) == 2
    assert client.post("/v1/jobs", json=body(files), headers=headers).json()["id"] == second.json()["id"]
    assert client.get(f"/v1/jobs/{first['id']}").json()["status"] == "validating_files"  # the old job is untouched
    _age(ctx, second.json()["id"], 61)  # an expired key takes another body too, without a conflict
    third = client.post("/v1/jobs", json=body(files, epochs=3), headers=headers)
    assert third.status_code == 200 and third.json()["id"] not in (first["id"], second.json()["id"])


def test_list_filters_before_paginating(client: TestClient, files: dict[str, Any]) -> None:
    ids = [client.post("/v1/jobs", json=body(files)).json()["id"] for _ in range(3)]
    client.post(f"/v1/jobs/{ids[1]}/cancel")
    page = client.get("/v1/jobs?limit=1&status=validating_files").json()
    assert [j["id"] for j in page["data"]] == [ids[2]] and page["has_more"]
    page = client.get(f"/v1/jobs?limit=1&status=validating_files&after={page['last_id']}").json()
    assert [j["id"] for j in page["data"]] == [ids[0]] and not page["has_more"]
    assert [j["id"] for j in client.get("/v1/jobs?status=cancelled").json()["data"]] == [ids[1]]
    assert client.get("/v1/jobs?status=nope").status_code == 422


def test_cancel(client: TestClient, files: dict[str, Any], ctx: ServiceContext) -> None:
    job_id = client.post("/v1/jobs", json=body(files)).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    other = client.post("/v1/jobs", json=body(files)).json()["id"]
    with session_scope(ctx.sessions) as session:
        jobs.finish(session, other, jobs.SUCCEEDED)
    resp = client.post(f"/v1/jobs/{other}/cancel")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "job_finished"


def test_events_paged_and_streamed(client: TestClient, files: dict[str, Any], ctx: ServiceContext) -> None:
    job_id = client.post("/v1/jobs", json=body(files)).json()["id"]
    with session_scope(ctx.sessions) as session:
        for epoch in (1, 2):
            jobs.add_event(session, job_id, f"epoch {epoch}", type="metrics", data={"epoch": epoch, "cr": float("inf")})
        jobs.finish(session, job_id, jobs.FAILED, error={"code": "x", "message": "boom", "param": "dataset"})
    page = client.get(f"/v1/jobs/{job_id}/events?limit=2").json()
    assert [e["message"] for e in page["data"]] == ["job created; validating the files", "epoch 1"]
    assert page["has_more"] and page["data"][1]["data"] == {"epoch": 1, "cr": None}
    rest = client.get(f"/v1/jobs/{job_id}/events?after={page['data'][-1]['id']}").json()
    assert [e["type"] for e in rest["data"]] == ["metrics", "message"] and not rest["has_more"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events?stream=true") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(resp.iter_text())
    assert text.count("event: metrics") == 2 and text.rstrip().endswith('data: {"status": "failed"}')
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["error"] == {"code": "x", "message": "boom", "param": "dataset"}


def test_artifact_download_streams_with_etag(client: TestClient, files: dict[str, Any], ctx: ServiceContext) -> None:
    import io

    job_id = client.post("/v1/jobs", json=body(files)).json()["id"]
    payload = b"weights" * 1000
    size, sha = ctx.storage.put_stream(f"jobs/{job_id}/model.safetensors", io.BytesIO(payload))
    with session_scope(ctx.sessions) as session:
        session.add(
            Artifact(
                job_id=job_id,
                name="model.safetensors",
                bytes=size,
                sha256=sha,
                storage_key=f"jobs/{job_id}/model.safetensors",
            )
        )
        jobs.finish(session, job_id, jobs.SUCCEEDED)
    listing = client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]
    assert listing == [
        {
            "name": "model.safetensors",
            "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "url": f"/v1/jobs/{job_id}/artifacts/model.safetensors",
        }
    ]
    resp = client.get(listing[0]["url"])
    assert resp.content == payload
    assert resp.headers["content-length"] == str(len(payload)) and resp.headers["etag"] == f'"{sha}"'
    assert client.get(listing[0]["url"], headers={"If-None-Match": f'"{sha}"'}).status_code == 304
    assert client.get(f"/v1/jobs/{job_id}/artifacts/nope").json()["error"]["code"] == "artifact_not_found"
    with ctx.sessions() as session:
        assert session.get(Job, job_id) is not None


def test_timm_names_are_accepted_and_malformed_ones_refused_at_once(
    client: TestClient, files: dict[str, Any], published: list[Message]
) -> None:
    good = body(files) | {"model": {"name": "timm:resnet18"}}
    resp = client.post("/v1/jobs", json=good)
    assert resp.status_code == 200, resp.text
    assert published == [Message(TASK_VALIDATE, resp.json()["id"])]
    for name in ("timm:bad name!", "timm:", "timm:hf-hub:timm/resnet18", "timm:resnet18.a1_in1k"):
        resp = client.post("/v1/jobs", json=body(files) | {"model": {"name": name}})
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "model.name")
        assert error["type"] == "invalid_request_error"
        assert "timm.list_models()" in error["message"], error
    assert "drop the pretrained tag '.a1_in1k'" in error["message"]
    # pretrained weights cannot be asked for: the model object has no such field
    resp = client.post("/v1/jobs", json=body(files) | {"model": {"name": "timm:resnet18", "pretrained": True}})
    assert (resp.status_code, resp.json()["error"]["code"]) == (422, "unknown_field")
    assert len(published) == 1
