"""A continued job on the real stores: PostgreSQL holds the jobs (and runs the retention query's child check), moto's
S3 server holds the parent's checkpoint blob that the child starts from (issue 15, must-have 2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dwf_service import jobs, runner
from dwf_service.auth import add_key
from dwf_service.blob_checkpoints import expire_checkpoints
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.migrate import upgrade_db
from tests.service_helpers import job_row, mlp_onnx, mnist_npz, stored_job

from .conftest import s3_settings
from .test_blob_checkpoints import _keys

KEY = "dwf_stack-continue-0123456789abcdefghij"


@pytest.fixture
def stack(tmp_path: Path, own_database: str, s3_endpoint: str, s3_bucket: str) -> Iterator[ServiceContext]:
    settings = s3_settings(
        tmp_path, s3_endpoint, s3_bucket, database_url=own_database, heartbeat_seconds=0.5, device="cpu"
    )
    upgrade_db(settings.database_url)
    ctx = ServiceContext.create(settings, publisher=lambda *_args: None, use_celery=False)
    with session_scope(ctx.sessions) as session:
        add_key(session, KEY)
    yield ctx
    ctx.engine.dispose()


def test_a_child_starts_from_its_parents_blob_which_outlives_its_retention_while_needed(
    stack: ServiceContext, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    data, model = mnist_npz(tmp_path / "mnist.npz", 300, 100), mlp_onnx(tmp_path / "mlp.onnx", hidden=(32,))
    parent = stored_job(stack, model, data, target_sparsity=0.5)
    runner.validate_job(stack, parent)
    runner.train_job(stack, parent)
    parent_key = job_row(stack, parent).checkpoint_key
    assert job_row(stack, parent).status == jobs.SUCCEEDED and parent_key is not None

    app = create_app(stack.settings, context=stack, reconciler=False)
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as client:
        resp = client.post("/v1/jobs", json={"from_job": parent, "method": {"target_sparsity": 0.9}, "seed": 1})
    assert resp.status_code == 200, resp.text
    child = resp.json()["id"]
    # Past its retention (0 s here) the parent's blob stays while the child is unfinished: PostgreSQL's EXISTS.
    assert expire_checkpoints(stack.sessions, stack.storage, 0.0) == []
    assert any(k.endswith(parent_key) for k in _keys(s3_client, s3_bucket))

    runner.validate_job(stack, child)
    runner.train_job(stack, child)
    row = job_row(stack, child)
    assert (row.status, row.parent_job_id) == (jobs.SUCCEEDED, parent)
    assert row.metrics is not None and row.metrics["continued_from"]["job_id"] == parent
    assert row.metrics["target_met"] and row.metrics["continued_from"]["target_sparsity"] == 0.5
    # Both ended: the next pass removes both blobs.
    assert sorted(expire_checkpoints(stack.sessions, stack.storage, 0.0)) == sorted([parent, child])
    assert [k for k in _keys(s3_client, s3_bucket) if "/checkpoints/" in k] == []
