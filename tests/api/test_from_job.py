"""POST /v1/jobs with from_job: which finished jobs can be continued, what the child inherits, every refusal typed,
and the parent's checkpoint blob kept while a child needs it."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.schemas import JobCreate, JobSubmit
from dwf_service import jobs
from dwf_service.blob_checkpoints import expire_checkpoints
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job, utcnow
from dwf_service.queue import TASK_VALIDATE, Message
from tests.api.test_jobs import body


def _finished(ctx: ServiceContext, job_id: str, *, status: str = jobs.SUCCEEDED, key: bool = True,
              epoch: int | None = None, depth: int = 3, sparsity: float = 0.9) -> str:  # fmt: skip
    """Mark ``job_id`` ended as a worker would have: metrics with the resolved depth, a retained checkpoint blob."""
    blob = f"jobs/{job_id}/checkpoints/final.tar"
    ctx.storage.put_stream(blob, io.BytesIO(b"tar"))
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        assert job is not None
        jobs.finish(session, job_id, status)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                metrics={"config": {"depth": depth}, "sparsity": sparsity} if status == jobs.SUCCEEDED else None,
                checkpoint_key=blob if key else None,
                checkpoint_epoch=(job.epochs if epoch is None else epoch) if key else None,
            )
        )
    return job_id


@pytest.fixture
def parent(client: TestClient, files: dict[str, Any], ctx: ServiceContext) -> str:
    """A succeeded DWF job at 90% (depth left to the default, 3), 2 epochs, lr 0.05, its final state retained."""
    request = body(files, target_sparsity=0.9, lr=0.05)
    del request["method"]["depth"]
    resp = client.post("/v1/jobs", json=request)
    assert resp.status_code == 200, resp.text
    return _finished(ctx, resp.json()["id"])


def _error(resp: Any, status: int, code: str, param: str) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    return str(error["message"])


def test_a_child_inherits_and_links_to_its_parent(
    client: TestClient, files: dict[str, Any], parent: str, published: list[Message]
) -> None:
    resp = client.post("/v1/jobs", json={"from_job": parent, "method": {"target_sparsity": 0.97}})
    assert resp.status_code == 200, resp.text
    child = resp.json()
    assert child["parent_job_id"] == parent and child["status"] == "validating_files"
    assert child["model"] == {"file_id": files["model"]} and child["dataset"]["file_id"] == files["dataset"]
    # The parent's method settings, its resolved depth, the new target; the parent's target is not inherited.
    method = child["method"]
    assert (method["depth"], method["lr"], method["epochs"], method["target_sparsity"]) == (3, 0.05, 2, 0.97)
    assert published[-1] == Message(TASK_VALIDATE, child["id"])
    assert client.get(f"/v1/jobs/{child['id']}").json() == child
    assert client.get(f"/v1/jobs/{parent}").json()["parent_job_id"] is None
    listed = {j["id"]: j["parent_job_id"] for j in client.get("/v1/jobs").json()["data"]}
    assert listed[child["id"]] == parent
    # Settings given win; equal model and dataset may be repeated; the same Idempotency-Key replays the child.
    again = {"from_job": parent, "model": {"file_id": files["model"]}, "dataset": {"file_id": files["dataset"]},
             "method": {"target_sparsity": 0.99, "epochs": 1, "depth": 3}}  # fmt: skip
    first = client.post("/v1/jobs", json=again, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 200 and first.json()["method"]["epochs"] == 1
    assert client.post("/v1/jobs", json=again, headers={"Idempotency-Key": "k1"}).json()["id"] == first.json()["id"]


def test_unknown_or_other_tenants_parent_is_404(client: TestClient, client_b: TestClient, parent: str) -> None:
    resp = client_b.post("/v1/jobs", json={"from_job": parent, "method": {"target_sparsity": 0.97}})
    _error(resp, 404, "job_not_found", "from_job")
    unknown = "job-" + "0" * 26
    _error(client.post("/v1/jobs", json={"from_job": unknown, "method": {"target_sparsity": 0.97}}), 404,
           "job_not_found", "from_job")  # fmt: skip
    _error(client.post("/v1/jobs", json={"from_job": "job-../x", "method": {"target_sparsity": 0.97}}), 422,
           "invalid_value", "from_job")  # fmt: skip
    _error(client.post("/v1/jobs", json={"method": {"target_sparsity": 0.97}}), 422, "invalid_value", "model")


def test_only_a_succeeded_dwf_parent(client: TestClient, files: dict[str, Any], ctx: ServiceContext) -> None:
    pending = client.post("/v1/jobs", json=body(files, target_sparsity=0.9)).json()["id"]
    failed = _finished(ctx, client.post("/v1/jobs", json=body(files, target_sparsity=0.9)).json()["id"],
                       status=jobs.FAILED)  # fmt: skip
    for job_id, status in ((pending, "validating_files"), (failed, "failed")):
        resp = client.post("/v1/jobs", json={"from_job": job_id, "method": {"target_sparsity": 0.97}})
        assert status in _error(resp, 409, "parent_not_succeeded", "from_job")
    gmp = body(files, target_sparsity=0.9, type="gmp")
    del gmp["method"]["depth"]
    gmp_id = _finished(ctx, client.post("/v1/jobs", json=gmp).json()["id"], depth=1)
    resp = client.post("/v1/jobs", json={"from_job": gmp_id, "method": {"target_sparsity": 0.97}})
    assert "'gmp'" in _error(resp, 422, "from_job_incompatible", "from_job")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": {"name": "lenet5"}}, "model"),
        ({"dataset": {"file_id": "SAME", "val_fraction": 0.2}}, "dataset"),
        ({"weights_file_id": "file-w"}, "weights_file_id"),
        ({"method": {"target_sparsity": 0.97, "depth": 4}}, "method.depth"),
        ({"method": {"target_sparsity": 0.97, "structure": "both"}}, "method.structure"),
        ({"method": {"target_sparsity": 0.97, "include": ["fc*"]}}, "method.include"),
        ({"method": {"target_sparsity": 0.97, "dense_epochs": 2}}, "method.dense_epochs"),
        ({"method": {"target_sparsity": 0.97, "type": "gmp"}}, "method.type"),
        ({"method": {"epochs": 3}}, "method.target_sparsity"),
        ({"method": {"lam": 1e-3}}, "method.target_sparsity"),
        ({"method": {"target_sparsity": 0.9}}, "method.target_sparsity"),
        ({"method": {"target_sparsity": 0.5}}, "method.target_sparsity"),
    ],
)
def test_incompatible_children_are_422_naming_the_field(
    client: TestClient, files: dict[str, Any], parent: str, change: dict[str, Any], param: str
) -> None:
    request: dict[str, Any] = {"from_job": parent, "method": {"target_sparsity": 0.97}, **change}
    if "dataset" in change:
        request["dataset"] = {**change["dataset"], "file_id": files["dataset"]}
    _error(client.post("/v1/jobs", json=request), 422, "from_job_incompatible", param)


def test_a_parent_without_a_target_is_continued_above_what_it_reached(
    client: TestClient, files: dict[str, Any], ctx: ServiceContext
) -> None:
    lam_job = _finished(ctx, client.post("/v1/jobs", json=body(files, lam=1e-3)).json()["id"], sparsity=0.8)
    resp = client.post("/v1/jobs", json={"from_job": lam_job, "method": {"target_sparsity": 0.75}})
    assert "achieved sparsity 0.8" in _error(resp, 422, "from_job_incompatible", "method.target_sparsity")
    resp = client.post("/v1/jobs", json={"from_job": lam_job, "method": {"target_sparsity": 0.95}})
    assert resp.status_code == 200, resp.text
    assert "lam" not in resp.json()["method"] and resp.json()["method"]["target_sparsity"] == 0.95


def test_parent_state_gone_is_409_naming_the_retention(
    client: TestClient, files: dict[str, Any], ctx: ServiceContext
) -> None:
    expired = _finished(ctx, client.post("/v1/jobs", json=body(files, target_sparsity=0.9)).json()["id"], key=False)
    resp = client.post("/v1/jobs", json={"from_job": expired, "method": {"target_sparsity": 0.97}})
    assert "DWF_CHECKPOINT_RETENTION_SECONDS" in _error(resp, 409, "parent_state_unavailable", "from_job")
    partial = _finished(ctx, client.post("/v1/jobs", json=body(files, target_sparsity=0.9)).json()["id"], epoch=1)
    resp = client.post("/v1/jobs", json={"from_job": partial, "method": {"target_sparsity": 0.97}})
    assert "epoch 1 of 2" in _error(resp, 409, "parent_state_unavailable", "from_job")


def test_the_parents_blob_outlives_its_retention_while_a_child_is_unfinished(
    client: TestClient, parent: str, ctx: ServiceContext
) -> None:
    child = client.post("/v1/jobs", json={"from_job": parent, "method": {"target_sparsity": 0.97}}).json()["id"]
    with session_scope(ctx.sessions) as session:  # the parent ended two days ago: past the default retention
        session.execute(update(Job).where(Job.id == parent).values(finished_at=utcnow() - timedelta(days=2)))
    assert expire_checkpoints(ctx.sessions, ctx.storage, 86_400) == []
    with ctx.sessions() as session:
        row = session.get(Job, parent)
        assert row is not None and row.checkpoint_key is not None
        key = row.checkpoint_key
    assert b"".join(ctx.storage.open(key)) == b"tar"
    with session_scope(ctx.sessions) as session:
        jobs.finish(session, child, jobs.FAILED, error={"code": "x", "message": "x", "param": None})
    assert expire_checkpoints(ctx.sessions, ctx.storage, 86_400) == [parent]
    with pytest.raises(FileNotFoundError):
        b"".join(ctx.storage.open(key))


def test_submit_mirrors_create() -> None:
    """JobSubmit is JobCreate plus from_job: a field added to one must be added to the other."""
    assert set(JobSubmit.model_fields) == set(JobCreate.model_fields) | {"from_job"}
