"""Blob checkpoints on the real stack: PostgreSQL holds the pointer, moto's S3 server holds the tar (issue 15)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from dwf_core.checkpoint import Checkpoint, latest_epoch, load_checkpoint, save_checkpoint
from dwf_service import jobs
from dwf_service.blob_checkpoints import CheckpointSync, expire_checkpoints, publish_checkpoint
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.migrate import upgrade_db
from dwf_service.models import Job

from .conftest import s3_settings

REQUEST = {"model": {"name": "lenet_300_100"}, "dataset": {"file_id": "file-x"}, "method": {"epochs": 2}}


@pytest.fixture
def stack(tmp_path: Path, own_database: str, s3_endpoint: str, s3_bucket: str) -> Iterator[ServiceContext]:
    settings = s3_settings(tmp_path, s3_endpoint, s3_bucket, database_url=own_database, checkpoint_retention_seconds=0)
    upgrade_db(settings.database_url)
    ctx = ServiceContext.create(settings, publisher=lambda *_args: None, use_celery=False)
    yield ctx
    ctx.engine.dispose()


def _keys(s3_client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_checkpoint_moves_through_s3_and_expires(
    stack: ServiceContext, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    with session_scope(stack.sessions) as session:
        job_id = jobs.create_job(session, REQUEST, file_ids={"dataset": "file-x"}).id
        assert jobs.acquire_lease(session, job_id, "worker-a", (jobs.VALIDATING,), 60, 3)
    local = tmp_path / "worker-a"
    save_checkpoint(local, 1, Checkpoint({"w": torch.arange(4.0)}, {"epoch": 1}))
    assert publish_checkpoint(stack.sessions, stack.storage, job_id, "worker-a", local, 1)
    save_checkpoint(local, 2, Checkpoint({"w": torch.arange(4.0) * 2}, {"epoch": 2}))
    assert publish_checkpoint(stack.sessions, stack.storage, job_id, "worker-a", local, 2)
    with stack.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.checkpoint_epoch == 2
        key = job.checkpoint_key
    assert [k.endswith(str(key)) for k in _keys(s3_client, s3_bucket)] == [True]  # epoch 1's blob is gone

    # Worker B on another machine: nothing local, the blob from S3.
    other = CheckpointSync(stack, job_id, "worker-b", tmp_path / "worker-b")
    assert other.restore_if_missing(key)
    ckpt = load_checkpoint(tmp_path / "worker-b")
    assert latest_epoch(tmp_path / "worker-b") == 2
    assert ckpt is not None and torch.equal(ckpt.tensors["w"], torch.arange(4.0) * 2)
    assert not other.restore_if_missing(key)  # a local checkpoint is never overwritten

    with session_scope(stack.sessions) as session:
        assert jobs.finish(session, job_id, jobs.SUCCEEDED, owner="worker-a")
    assert expire_checkpoints(stack.sessions, stack.storage, 0.0) == [job_id]
    assert _keys(s3_client, s3_bucket) == []
