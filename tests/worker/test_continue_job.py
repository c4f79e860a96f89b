"""A continued job (POST /v1/jobs with from_job) through the API and the task bodies, on SQLite and local storage:
it starts from its parent's trained factors and reaches the higher target, resumes from its own checkpoint when
re-delivered, and fails fast when its parent's state is gone."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load
from sqlalchemy import select, update

from api.app import create_app
from dwf_service import jobs, runner
from dwf_service.auth import add_key
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Artifact, Job, JobEvent
from tests.service_helpers import job_row, mlp_onnx, mnist_npz, stored_job
from tests.worker.test_runner import _train_until_shutdown_after_epoch_1

KEY = "dwf_continue-key-0123456789abcdefghijklm"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    return {"data": mnist_npz(d / "mnist.npz", 300, 100), "model": mlp_onnx(d / "mlp.onnx", hidden=(32,))}


@pytest.fixture
def client(ctx: ServiceContext) -> Iterator[TestClient]:
    with session_scope(ctx.sessions) as session:
        add_key(session, KEY)
    app = create_app(ctx.settings, context=ctx, reconciler=False)
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as test_client:
        yield test_client


@pytest.fixture
def parent(ctx: ServiceContext, inputs: dict[str, Path]) -> str:
    """A DWF job trained to 50% in one epoch; its final checkpoint is retained in the blob store."""
    job_id = stored_job(ctx, inputs["model"], inputs["data"], target_sparsity=0.5)
    runner.validate_job(ctx, job_id)
    runner.train_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.checkpoint_epoch) == (jobs.SUCCEEDED, 1) and job.checkpoint_key
    return job_id


def _child(client: TestClient, parent: str, **method: object) -> str:
    # Another seed than the parent's: a child trained from scratch would then prune other weights.
    body = {"from_job": parent, "method": {"target_sparsity": 0.9, **method}, "seed": 1}
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["parent_job_id"] == parent
    return str(resp.json()["id"])


def _weights(ctx: ServiceContext, job_id: str) -> dict[str, torch.Tensor]:
    with ctx.sessions() as session:
        key = session.scalars(
            select(Artifact.storage_key).where(Artifact.job_id == job_id, Artifact.name == "model.safetensors")
        ).one()
    return load(b"".join(ctx.storage.open(key)))


def _messages(ctx: ServiceContext, job_id: str) -> list[str]:
    with ctx.sessions() as session:
        return list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def test_a_continued_job_goes_on_from_its_parents_factors_to_the_higher_target(
    ctx: ServiceContext, client: TestClient, parent: str
) -> None:
    child_id = _child(client, parent)
    runner.validate_job(ctx, child_id)
    runner.train_job(ctx, child_id)
    child = job_row(ctx, child_id)
    assert (child.status, child.error_code, child.parent_job_id) == (jobs.SUCCEEDED, None, parent)
    assert child.metrics is not None and child.metrics["target_met"]
    assert child.metrics["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert child.metrics["continued_from"]["job_id"] == parent
    assert (child.metrics["continued_from"]["epoch"], child.metrics["continued_from"]["target_sparsity"]) == (1, 0.5)
    assert any(m.startswith(f"continuing from job {parent}") for m in _messages(ctx, child_id))
    # Every weight the parent pruned (its factors at exact zero) is still zero in the child: it started from them.
    before, after = _weights(ctx, parent), _weights(ctx, child_id)
    pruned = 0
    for name, weight in before.items():
        if weight.dim() > 1:
            assert torch.all(after[name][weight == 0] == 0), name
            pruned += int((weight == 0).sum())
    assert pruned >= 0.49 * sum(w.numel() for w in before.values() if w.dim() > 1)
    # The parent's own blob is untouched (the child read a copy, in a folder of its own).
    assert job_row(ctx, parent).checkpoint_key is not None
    assert not (ctx.settings.work_dir / child_id).exists()


def test_a_redelivered_child_resumes_from_its_own_checkpoint(
    ctx: ServiceContext, client: TestClient, parent: str
) -> None:
    child_id = _child(client, parent, epochs=2)
    runner.validate_job(ctx, child_id)
    _train_until_shutdown_after_epoch_1(ctx, child_id)
    assert (job_row(ctx, child_id).status, job_row(ctx, child_id).checkpoint_epoch) == (jobs.QUEUED, 1)
    shutil.rmtree(ctx.settings.work_dir / child_id)  # another machine: only the blobs
    runner.train_job(ctx, child_id)
    child = job_row(ctx, child_id)
    assert child.status == jobs.SUCCEEDED and child.metrics is not None
    assert child.metrics["resumed_from_epoch"] == 1 and child.metrics["continued_from"]["job_id"] == parent
    assert [h["epoch"] for h in child.metrics["history"]] == [1, 2]
    assert "resuming from the checkpoint of epoch 1" in _messages(ctx, child_id)


@pytest.mark.parametrize("gone", ["pointer", "blob"])
def test_a_child_whose_parent_state_is_gone_fails_fast(
    ctx: ServiceContext, client: TestClient, parent: str, gone: str
) -> None:
    child_id = _child(client, parent)
    runner.validate_job(ctx, child_id)
    key = job_row(ctx, parent).checkpoint_key
    assert key is not None
    ctx.storage.delete(key)  # removed between the API's check and the child's start
    if gone == "pointer":
        with session_scope(ctx.sessions) as session:
            session.execute(update(Job).where(Job.id == parent).values(checkpoint_key=None, checkpoint_epoch=None))
    runner.train_job(ctx, child_id)
    child = job_row(ctx, child_id)
    assert (child.status, child.error_code, child.error_param) == (jobs.FAILED, "parent_state_unavailable", "from_job")
    assert parent in (child.error_message or "")
    if gone == "pointer":
        assert "DWF_CHECKPOINT_RETENTION_SECONDS" in (child.error_message or "")
    assert child.epoch is None  # failed before any training
