"""A sweep on two Celery workers against Redis, PostgreSQL and S3 (moto), and one of them SIGKILLed mid-child.

Two worker processes with separate data dirs (two machines as far as checkpoints go) run a 4-child sweep: two
children are running at the same moment under different lease owners. Once a running child has published the blob
checkpoint of an epoch, its worker is SIGKILLed and not restarted: the lease expires, the API's reconciler
re-enqueues the child, the other worker restores the checkpoint from S3 and resumes there, and the child succeeds
exactly once; the sweep then finishes with every child succeeded and its frontier in the bucket.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dwf_service.models import Artifact, Job, JobEvent, Sweep, SweepArtifact
from tests.integration.test_stack_e2e import Stack, _s3_objects
from tests.service_helpers import upload

pytestmark = pytest.mark.slow


class TwoWorkerStack(Stack):
    """The API and two workers, each with its own data dir (so a resume can only come from the blob store)."""

    def __init__(self, root: Path, services: dict[str, str], **overrides: str) -> None:
        super().__init__(root, services, **overrides)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_named_worker(self, name: str) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "validate,train"]
        argv += ["--concurrency", "1", "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        argv += ["-n", f"{name}-{uuid.uuid4().hex[:8]}@%h"]
        self.workers[name] = self._spawn(f"worker-{name}", argv, self.root / f"worker-{name}")

    def stop(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        super().stop()

    def logs(self) -> str:
        tails = [f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.root.glob("*.log"))]
        return "\n".join(tails)


def _rows(engine: sa.Engine, sweep_id: str) -> list[Any]:
    with engine.connect() as conn:
        query = sa.select(Job.id, Job.status, Job.lease_owner, Job.checkpoint_epoch, Job.attempts)
        return list(conn.execute(query.where(Job.sweep_id == sweep_id).order_by(Job.created_at, Job.id)).all())


def test_a_sweep_runs_on_two_workers_and_a_killed_workers_child_resumes_on_the_other(
    services: dict[str, str],
    inputs: dict[str, Path],
    engine: sa.Engine,
    s3_client: Any,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    stack = TwoWorkerStack(
        tmp_path, services, DWF_LEASE_SECONDS="4", DWF_HEARTBEAT_SECONDS="1", DWF_RECONCILE_SECONDS="1",
        DWF_REQUEUE_AFTER_SECONDS="30", DWF_TEST_FAULTS="71=sleep:3",
    )  # fmt: skip
    pids: dict[str, int] = {}
    try:
        stack.migrate()
        stack.start_api()
        for name in ("a", "b"):
            stack.start_named_worker(name)
            pids[name] = stack.workers[name].pid
        model_id = upload(stack.client, inputs["model"], "model")
        data_id = upload(stack.client, inputs["data"], "dataset")
        created = stack.client.post(
            "/v1/sweeps",
            json={
                "model": {"file_id": model_id},
                "dataset": {"file_id": data_id},
                "method": {"epochs": 4},
                "seed": 71,  # each child sleeps 3 s as its training starts: the two workers' children overlap
                "grid": {"target_sparsity": [0.5, 0.7, 0.8, 0.9]},
            },
        )
        assert created.status_code == 200, created.text
        sweep_id = created.json()["id"]

        # Two children running at once, under two lease owners (host:pid:run), one per worker process.
        deadline, owners = time.monotonic() + 180, set[str]()
        while len(owners) < 2:
            assert time.monotonic() < deadline, stack.logs()
            rows = _rows(engine, sweep_id)
            owners = {r.lease_owner.split(":")[1] for r in rows if r.status == "running" and r.lease_owner}
            time.sleep(0.1)
        assert owners == {str(pid) for pid in pids.values()}

        # A child whose checkpoint of epoch ≥ 1 is in S3: SIGKILL its worker, for good.
        deadline, victim = time.monotonic() + 180, None
        while victim is None:
            assert time.monotonic() < deadline, stack.logs()
            rows = _rows(engine, sweep_id)
            victim = next((r for r in rows if r.status == "running" and (r.checkpoint_epoch or 0) >= 1), None)
            time.sleep(0.05)
        killed = next(name for name, pid in pids.items() if str(pid) == victim.lease_owner.split(":")[1])
        stack.workers[killed].send_signal(signal.SIGKILL)
        stack.workers[killed].wait(timeout=10)

        deadline = time.monotonic() + 400
        while (sweep := stack.client.get(f"/v1/sweeps/{sweep_id}").json())["status"] not in (
            "succeeded",
            "failed",
            "partially_failed",
        ):
            assert time.monotonic() < deadline, f"{sweep}\n{stack.logs()}"
            time.sleep(0.5)
        assert sweep["status"] == "succeeded", f"{sweep}\n{stack.logs()}"
        child = stack.client.get(f"/v1/jobs/{victim.id}").json()
        assert child["attempts"] == 2 and child["metrics"]["resumed_from_epoch"] >= victim.checkpoint_epoch
        messages = [e["message"] for e in stack.events(victim.id)]
        assert any("lease expired" in m for m in messages), messages
        assert any(m.startswith("resuming from the checkpoint of epoch") for m in messages), messages
    finally:
        stack.stop()

    with engine.connect() as conn:
        jobs = conn.execute(sa.select(Job.id, Job.status).where(Job.sweep_id == sweep_id)).all()
        assert [j.status for j in jobs] == ["succeeded"] * 4
        for job in jobs:
            ended = conn.execute(
                sa.select(sa.func.count()).where(JobEvent.job_id == job.id, JobEvent.message == "job succeeded")
            ).scalar_one()
            names = conn.execute(sa.select(Artifact.name).where(Artifact.job_id == job.id)).scalars().all()
            assert ended == 1 and len(names) == len(set(names)) and "metrics.json" in names
        assert conn.execute(sa.select(Sweep.finished_at).where(Sweep.id == sweep_id)).scalar_one() is not None
        keys = conn.execute(sa.select(SweepArtifact.storage_key).where(SweepArtifact.sweep_id == sweep_id)).all()
    objects = _s3_objects(s3_client, s3_bucket)
    assert len(keys) == 2 and all(k.storage_key in objects for k in keys)
