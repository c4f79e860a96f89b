"""Job integrity in the worker: time-limit ordering, input checksums, per-run artifact keys, time limits and
database errors in a task, and the test-only fault hook (the fault tier, tests/fault, exercises them for real)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from dwf_service import jobs, runner
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import File, Job
from dwf_service.queue import TASK_TRAIN, Message, celery_config, check_worker_limits
from dwf_service.settings import Settings
from tests.service_helpers import job_row, mlp_onnx, mnist_npz, stored_job

REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"task_soft_time_limit": 40, "task_time_limit": 40}, "DWF_TASK_SOFT_TIME_LIMIT (40) must be below"),
        ({"broker_url": REDIS, "task_time_limit": 0, "task_soft_time_limit": 0}, "DWF_TASK_TIME_LIMIT must be set"),
        (
            {"broker_url": REDIS, "redis_visibility_timeout": 20, "task_time_limit": 40, "task_soft_time_limit": 30},
            "DWF_TASK_TIME_LIMIT (40) must be below DWF_REDIS_VISIBILITY_TIMEOUT (20)",
        ),
    ],
)
def test_worker_refuses_limits_that_outlive_the_visibility_timeout(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_worker_limits(Settings(data_dir=tmp_path, **values))


def test_default_limits_are_ordered_and_reach_celery(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=REDIS, worker_max_memory_per_child_kib=4096)
    check_worker_limits(settings)
    check_worker_limits(Settings(data_dir=tmp_path, task_time_limit=0, task_soft_time_limit=0))  # embedded: no timeout
    conf = celery_config(settings)
    assert conf["task_soft_time_limit"] < conf["task_time_limit"] < conf["visibility_timeout"]
    assert conf["broker_transport_options"]["visibility_timeout"] == conf["visibility_timeout"]
    assert conf["worker_max_memory_per_child"] == 4096
    assert conf["worker_soft_shutdown_timeout"] == 30.0
    assert "task_time_limit" not in celery_config(Settings(data_dir=tmp_path, task_time_limit=0))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("integrity-inputs")
    return {"data": mnist_npz(d / "mnist.npz", 200, 60), "model": mlp_onnx(d / "mlp.onnx", hidden=(16,))}


def _queued_job(ctx: ServiceContext, inputs: dict[str, Path]) -> str:
    """A job moved straight to ``queued`` (its validation is not what these tests are about)."""
    job_id = stored_job(ctx, inputs["model"], inputs["data"])
    with session_scope(ctx.sessions) as session:
        assert jobs.acquire_lease(session, job_id, "validator", (jobs.VALIDATING,), 60, 3)
        assert jobs.mark_validated(session, job_id, "validator", "ok")
    return job_id


def test_corrupt_input_fails_with_a_checksum_error(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    job_id = _queued_job(ctx, inputs)
    with ctx.sessions() as session:
        data = session.get(File, job_row(ctx, job_id).dataset_file_id)
        assert data is not None
        path = ctx.settings.blob_dir / data.storage_key
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one byte flipped in the blob store after the upload
    path.write_bytes(bytes(blob))
    runner.train_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.error_code, job.error_param) == (jobs.FAILED, "file_checksum_mismatch", "dataset.file_id")


def test_soft_time_limit_fails_the_job_and_cleans_up(
    ctx: ServiceContext, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dwf_core.pipeline

    def too_slow(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(dwf_core.pipeline, "run", too_slow)
    job_id = _queued_job(ctx, inputs)
    runner.train_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.error_code, job.lease_owner) == (jobs.FAILED, "time_limit", None)
    assert not (ctx.settings.work_dir / job_id).exists()


def test_database_error_requeues_instead_of_failing(
    ctx: ServiceContext, inputs: dict[str, Path], published: list[Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dwf_core.pipeline

    def db_gone(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        raise OperationalError("select 1", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(dwf_core.pipeline, "run", db_gone)
    job_id = _queued_job(ctx, inputs)
    runner.train_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.attempts, job.lease_owner, job.error_code) == (jobs.QUEUED, 1, None, None)
    assert published[-1] == Message(TASK_TRAIN, job_id)


def test_a_run_that_lost_its_lease_leaves_no_objects(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    job_id = _queued_job(ctx, inputs)
    out = ctx.settings.work_dir / "lost" / "out"
    out.mkdir(parents=True)
    (out / "model.sparse.safetensors").write_bytes(b"stale")
    (out / "metrics.json").write_bytes(b"{}")
    assert not runner._store_results(ctx, job_id, "host:1:stale123", out, {})  # never held the lease
    jobs_dir = ctx.settings.blob_dir / "jobs"
    assert not [p for p in jobs_dir.rglob("*") if p.is_file()] if jobs_dir.exists() else True
    with ctx.sessions() as session:
        assert session.scalar(select(Job.status).where(Job.id == job_id)) == jobs.QUEUED


def _fake(seed: int, env: str = "dev") -> tuple[Any, Any, Any]:
    ctx = SimpleNamespace(settings=SimpleNamespace(env=env))
    job = SimpleNamespace(id="job-x", request={"seed": seed})
    lease = SimpleNamespace(should_stop=lambda: False)
    return ctx, job, lease


def test_fault_hook_is_off_without_the_worker_variable_and_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runner.TEST_FAULTS_ENV, raising=False)
    runner._test_fault(*_fake(666))  # no variable: nothing happens (an `exit` would end this process)
    monkeypatch.setenv(runner.TEST_FAULTS_ENV, "666=exit")
    runner._test_fault(*_fake(666, env="production"))
    runner._test_fault(*_fake(1))  # another seed
    monkeypatch.setenv(runner.TEST_FAULTS_ENV, "7=sleep:0.3")
    t0 = time.monotonic()
    runner._test_fault(*_fake(7))
    assert 0.25 < time.monotonic() - t0 < 5
