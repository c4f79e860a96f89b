"""/v1/sweeps: grid expansion into ordinary jobs, all-or-nothing validation and quota, idempotency, tenancy,
status derived from the children, cancel, and the frontier artifacts stored by finalize_sweep."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from dwf_service import jobs, sweeps
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job, Sweep, SweepArtifact
from dwf_service.queue import TASK_FINALIZE_SWEEP, TASK_VALIDATE, Message


def sweep_body(files: dict[str, Any], grid: dict[str, Any], **method: Any) -> dict[str, Any]:
    return {
        "model": {"file_id": files["model"]},
        "dataset": {"file_id": files["dataset"]},
        "method": {"epochs": 2, **method},
        "grid": grid,
    }


def counts(ctx: ServiceContext) -> tuple[int, int]:
    with ctx.sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(Sweep)) or 0,
            session.scalar(select(func.count()).select_from(Job)) or 0,
        )


def test_a_grid_becomes_one_ordinary_job_per_point(
    client: TestClient, files: dict[str, Any], published: list[Message]
) -> None:
    resp = client.post("/v1/sweeps", json=sweep_body(files, {"target_sparsity": [0.9, 0.99], "depth": [2, 3]}))
    assert resp.status_code == 200, resp.text
    sweep = resp.json()
    assert sweep["id"].startswith("swp-") and sweep["object"] == "sweep" and sweep["status"] == "queued"
    points = [c["point"] for c in sweep["children"]]
    # depth before target_sparsity in GRID_FIELDS: target_sparsity varies fastest.
    assert points == [
        {"depth": 2, "target_sparsity": 0.9},
        {"depth": 2, "target_sparsity": 0.99},
        {"depth": 3, "target_sparsity": 0.9},
        {"depth": 3, "target_sparsity": 0.99},
    ]
    assert sweep["counts"]["validating_files"] == 4 and sweep["finished_at"] is None
    child_ids = [c["job_id"] for c in sweep["children"]]
    assert published == [Message(TASK_VALIDATE, job_id) for job_id in child_ids]
    for child_id, point in zip(child_ids, points, strict=True):
        job = client.get(f"/v1/jobs/{child_id}").json()
        assert job["sweep_id"] == sweep["id"] and job["method"]["epochs"] == 2
        assert {k: job["method"][k] for k in point} == point
    plain = {"model": {"file_id": files["model"]}, "dataset": {"file_id": files["dataset"]}, "method": {"epochs": 1}}
    assert client.post("/v1/jobs", json=plain).json()["sweep_id"] is None
    listed = client.get("/v1/jobs").json()["data"]
    assert {j["id"] for j in listed if j["sweep_id"] == sweep["id"]} == set(child_ids) and len(listed) == 5
    by_sweep = client.get("/v1/jobs", params={"sweep_id": sweep["id"]}).json()["data"]
    assert [j["id"] for j in by_sweep] == sorted(child_ids, reverse=True)
    assert client.get(f"/v1/sweeps/{sweep['id']}").json() == sweep
    assert [s["id"] for s in client.get("/v1/sweeps").json()["data"]] == [sweep["id"]]


@pytest.mark.parametrize(
    ("method", "grid", "code", "param"),
    [
        # lam and target_sparsity together: the point that combines them is refused, naming the grid axis.
        ({"target_sparsity": 0.9}, {"lam": [1e-4, 2e-4]}, "invalid_grid_point", "grid.lam"),
        # a pruning baseline without a target: the method-level rule, for the point with type gmp.
        ({}, {"type": ["dwf", "gmp"]}, "invalid_grid_point", "grid.type"),
        ({}, {"depth": [2, 2]}, "invalid_value", "grid"),
        ({}, {"depth": [99]}, "invalid_value", "grid.depth.0"),
        ({}, {}, "invalid_value", "grid"),
        ({}, {"momentum": [0.5]}, "unknown_field", "grid.momentum"),
        ({"bogus": 1}, {"depth": [2]}, "invalid_grid_point", "method.bogus"),
    ],
)
def test_a_bad_grid_creates_nothing(
    client: TestClient,
    ctx: ServiceContext,
    files: dict[str, Any],
    published: list[Message],
    method: dict[str, Any],
    grid: dict[str, Any],
    code: str,
    param: str,
) -> None:
    resp = client.post("/v1/sweeps", json=sweep_body(files, grid, **method))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert counts(ctx) == (0, 0) and published == []


def test_a_grid_over_the_child_limit_is_refused(client: TestClient, ctx: ServiceContext, files: dict[str, Any]) -> None:
    ctx.settings.sweep_max_children = 5
    resp = client.post("/v1/sweeps", json=sweep_body(files, {"depth": [2, 3], "target_sparsity": [0.5, 0.9, 0.99]}))
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "sweep_too_large" and "2 × 3 = 6" in resp.json()["error"]["message"]
    assert counts(ctx) == (0, 0)


def test_unknown_files_answer_404(client: TestClient, ctx: ServiceContext, files: dict[str, Any]) -> None:
    body = sweep_body({**files, "dataset": "file-nope"}, {"depth": [2, 3]})
    resp = client.post("/v1/sweeps", json=body)
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "dataset.file_id"
    assert counts(ctx) == (0, 0)


def test_the_quota_counts_every_child_all_or_nothing(
    client: TestClient, ctx: ServiceContext, files: dict[str, Any]
) -> None:
    ctx.settings.quota_max_active_jobs = 4
    assert client.post("/v1/sweeps", json=sweep_body(files, {"depth": [2]})).status_code == 200
    resp = client.post("/v1/sweeps", json=sweep_body(files, {"depth": [2, 3, 4, 5]}))
    assert resp.status_code == 429 and resp.headers["Retry-After"]
    error = resp.json()["error"]
    assert error["code"] == "active_jobs_quota_exceeded" and "none was created" in error["message"]
    assert counts(ctx) == (1, 1)
    assert client.post("/v1/sweeps", json=sweep_body(files, {"depth": [2, 3, 4]})).status_code == 200
    assert counts(ctx) == (2, 4)


def test_idempotency_key_replays_the_sweep(client: TestClient, ctx: ServiceContext, files: dict[str, Any]) -> None:
    body = sweep_body(files, {"depth": [2, 3]})
    first = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "sweep-1"})
    again = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "sweep-1"})
    assert first.status_code == again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert counts(ctx) == (1, 2)
    other = client.post("/v1/sweeps", json=sweep_body(files, {"depth": [4]}), headers={"Idempotency-Key": "sweep-1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert counts(ctx) == (1, 2)


def test_another_tenants_sweep_is_not_found(
    client: TestClient, client_b: TestClient, ctx: ServiceContext, files: dict[str, Any]
) -> None:
    sweep = client.post("/v1/sweeps", json=sweep_body(files, {"depth": [2, 3]})).json()
    for resp in (
        client_b.get(f"/v1/sweeps/{sweep['id']}"),
        client_b.post(f"/v1/sweeps/{sweep['id']}/cancel"),
        client_b.get(f"/v1/sweeps/{sweep['id']}/artifacts"),
        client_b.get(f"/v1/sweeps/{sweep['id']}/artifacts/frontier.json"),
    ):
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "sweep_not_found"
    assert client_b.get("/v1/sweeps").json()["data"] == []
    # B's files are not A's: a sweep of B on A's files is refused like a job would be.
    assert client_b.post("/v1/sweeps", json=sweep_body(files, {"depth": [2]})).status_code == 404
    assert client.get(f"/v1/sweeps/{sweep['id']}").json()["status"] == "queued"


def _finish_child(ctx: ServiceContext, job_id: str, status: str, metrics: dict[str, Any] | None = None) -> None:
    with session_scope(ctx.sessions) as session:
        error = {"code": "boom", "message": "it broke", "param": None} if status == jobs.FAILED else None
        assert jobs.finish(session, job_id, status, error=error, metrics=metrics)


def test_cancel_ends_every_unstarted_child_then_finalize_makes_the_sweep_cancelled(
    client: TestClient, ctx: ServiceContext, files: dict[str, Any], published: list[Message]
) -> None:
    sweep = client.post("/v1/sweeps", json=sweep_body(files, {"target_sparsity": [0.9, 0.99, 0.995]})).json()
    first, *rest = (c["job_id"] for c in sweep["children"])
    _finish_child(ctx, first, jobs.SUCCEEDED, {"test_accuracy": 0.97, "compression_ratio": 10.0, "sparsity": 0.9})
    published.clear()
    cancelled = client.post(f"/v1/sweeps/{sweep['id']}/cancel").json()
    assert [c["status"] for c in cancelled["children"]] == ["succeeded", "cancelled", "cancelled"]
    assert cancelled["cancel_requested"] is True and cancelled["status"] == "finalizing"
    # Two children ended in one transaction: one finalize message (the outbox drops duplicates).
    assert published == [Message(TASK_FINALIZE_SWEEP, sweep["id"])]
    assert sweeps.finalize_sweep(ctx, sweep["id"]) is True
    done = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert done["status"] == "cancelled" and done["finished_at"] is not None
    assert done["children"][0]["test_accuracy"] == 0.97 and rest
    resp = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "sweep_finished"


def test_finalize_waits_for_every_child_and_stores_the_frontier_once(
    client: TestClient, ctx: ServiceContext, files: dict[str, Any], published: list[Message]
) -> None:
    sweep = client.post("/v1/sweeps", json=sweep_body(files, {"target_sparsity": [0.9, 0.99, 0.995]})).json()
    sweep_id = sweep["id"]
    a, b, c = (child["job_id"] for child in sweep["children"])
    _finish_child(
        ctx,
        a,
        jobs.SUCCEEDED,
        {
            "test_accuracy": 0.98,
            "compression_ratio": 10.0,
            "sparsity": 0.9,
            # one extra cut of its own frontier, dominated by b's model
            "frontier": [{"file": "frontier-cr50.sparse.safetensors", "test_accuracy": 0.90, "compression_ratio": 50}],
            "inference": {"dense": {"macs": 1000}, "compact": {"macs": 400}},
        },
    )
    _finish_child(
        ctx,
        b,
        jobs.SUCCEEDED,
        {"test_accuracy": 0.96, "compression_ratio": 100.0, "sparsity": 0.99, "mac_fraction": 0.2},
    )
    assert client.get(f"/v1/sweeps/{sweep_id}").json()["status"] == "running"
    assert sweeps.finalize_sweep(ctx, sweep_id) is False  # c has not ended
    assert client.get(f"/v1/sweeps/{sweep_id}/artifacts").json()["data"] == []
    published.clear()
    _finish_child(ctx, c, jobs.FAILED)
    assert published == [Message(TASK_FINALIZE_SWEEP, sweep_id)]
    assert client.get(f"/v1/sweeps/{sweep_id}").json()["status"] == "finalizing"
    assert sweeps.finalize_sweep(ctx, sweep_id) is True
    assert sweeps.finalize_sweep(ctx, sweep_id) is False  # a second delivery stores nothing
    with ctx.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SweepArtifact)) == 2
    out = client.get(f"/v1/sweeps/{sweep_id}").json()
    assert out["status"] == "partially_failed"
    assert out["counts"]["succeeded"] == 2 and out["counts"]["failed"] == 1
    assert out["children"][2]["error_code"] == "boom"
    listed = client.get(f"/v1/sweeps/{sweep_id}/artifacts").json()["data"]
    assert [a["name"] for a in listed] == ["frontier.json", "frontier.png"]
    resp = client.get(listed[0]["url"])
    assert resp.status_code == 200 and resp.headers["ETag"] == f'"{listed[0]["sha256"]}"'
    front = json.loads(resp.content)
    assert front["succeeded"] == 2 and front["not_succeeded"] == [
        {"job_id": c, "point": {"target_sparsity": 0.995}, "status": "failed"}
    ]
    assert len(front["candidates"]) == 3
    assert [(r["job_id"], r["compression_ratio"]) for r in front["compression_front"]] == [(a, 10.0), (b, 100.0)]
    assert [(r["job_id"], r["mac_fraction"]) for r in front["mac_front"]] == [(a, 0.4), (b, 0.2)]
    png = client.get(listed[1]["url"])
    assert png.content.startswith(b"\x89PNG") and len(png.content) == listed[1]["bytes"]
    assert client.get(listed[0]["url"], headers={"If-None-Match": resp.headers["ETag"]}).status_code == 304
    assert client.get(f"/v1/sweeps/{sweep_id}/artifacts/nope.txt").status_code == 404
