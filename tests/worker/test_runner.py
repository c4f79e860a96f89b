"""The task bodies (dwf_service.runner), called directly on a real SQLite database and local storage."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from dwf_core.report_html import REPORT_ARTIFACTS
from dwf_service import jobs, runner
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Artifact, Job, JobEvent, JobResult
from dwf_service.queue import TASK_TRAIN, TASK_VALIDATE, Message
from tests.service_helpers import job_row, mlp_onnx, mnist_npz, stored_job, train_cancelled_at_step


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small MNIST subset and three ONNX models: a good one, one with too few outputs, and garbage."""
    d = tmp_path_factory.mktemp("inputs")
    garbage = d / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07" + b"not a protobuf graph" * 10)
    return {
        "data": mnist_npz(d / "mnist.npz", 300, 100),
        "model": mlp_onnx(d / "mlp.onnx", hidden=(32,)),
        "narrow": mlp_onnx(d / "narrow.onnx", hidden=(32,), classes=5),
        "garbage": garbage,
    }


def test_validation_failure_names_the_param(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    job_id = stored_job(ctx, inputs["narrow"], inputs["data"])
    runner.validate_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.error_code, job.error_param) == (jobs.FAILED, "output_shape_mismatch", "model")
    assert "10 classes" in (job.error_message or "")
    assert not (ctx.settings.work_dir / job_id).exists()


def test_garbage_model_fails_validation(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    job_id = stored_job(ctx, inputs["garbage"], inputs["data"])
    runner.validate_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.error_param) == (jobs.FAILED, "model")


def test_validate_then_train_stores_artifacts_and_result(
    ctx: ServiceContext, inputs: dict[str, Path], published: list[Message]
) -> None:
    job_id = stored_job(ctx, inputs["model"], inputs["data"])
    runner.validate_job(ctx, job_id)
    assert job_row(ctx, job_id).status == jobs.QUEUED
    assert published[-1] == Message(TASK_TRAIN, job_id)
    runner.train_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.progress, job.error_code) == (jobs.SUCCEEDED, 1.0, None)
    assert job.metrics is not None and 0 <= job.metrics["test_accuracy"] <= 1
    with ctx.sessions() as session:
        artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        result = session.scalars(select(JobResult).where(JobResult.job_id == job_id)).one()
        types = session.scalars(select(JobEvent.type).where(JobEvent.job_id == job_id)).all()
    assert set(artifacts) == {
        *("model.safetensors", "model.sparse.safetensors", "model.onnx", "metrics.json"),
        # dwf_core.compact: the MLP graph compacts and quantizes
        *("model.compact.safetensors", "model.compact.onnx", "model.compact.int8.onnx"),
        *REPORT_ARTIFACTS,
    }
    assert job.metrics["inference"]["compact"]["macs"] <= job.metrics["inference"]["dense"]["macs"]
    for art in artifacts.values():
        blob = b"".join(ctx.storage.open(art.storage_key))
        assert (len(blob), hashlib.sha256(blob).hexdigest()) == (art.bytes, art.sha256)
    assert hashlib.sha256(result.sparse_weights).hexdigest() == artifacts["model.sparse.safetensors"].sha256
    assert result.metrics["nnz"] == job.metrics["nnz"]
    assert "metrics" in types
    assert not (ctx.settings.work_dir / job_id).exists()
    runner.train_job(ctx, job_id)  # a duplicate delivery of a finished job does nothing
    assert job_row(ctx, job_id).status == jobs.SUCCEEDED


def test_target_sparsity_reaches_the_worker(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    job_id = stored_job(ctx, inputs["model"], inputs["data"], target_sparsity=0.9)
    runner.validate_job(ctx, job_id)
    runner.train_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.error_code) == (jobs.SUCCEEDED, None)
    assert job.metrics is not None and job.metrics["target_sparsity"] == 0.9
    assert abs(job.metrics["sparsity"] - 0.9) <= 0.01 and job.metrics["threshold_mode"] == "target"
    assert job.metrics["config"]["lam"] is None and job.metrics["lam"] > 0


def test_cancel_requested_before_training_cancels(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    job_id = stored_job(ctx, inputs["model"], inputs["data"])
    runner.validate_job(ctx, job_id)
    with session_scope(ctx.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=jobs.RUNNING))
        jobs.request_cancel(session, job_id)
    runner.train_job(ctx, job_id)
    assert job_row(ctx, job_id).status == jobs.CANCELLED


def test_cancel_during_training_stops_within_a_step(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    job_id = stored_job(ctx, inputs["model"], inputs["data"], epochs=50)
    runner.validate_job(ctx, job_id)
    polls = train_cancelled_at_step(ctx, job_id)
    job = job_row(ctx, job_id)
    assert job.status == jobs.CANCELLED and polls == 10
    assert job.epoch in (None, 1, 2)


def _train_until_shutdown_after_epoch_1(ctx: ServiceContext, job_id: str) -> None:
    """Run the job's training with the worker's shutdown signalled right after epoch 1 (it then re-queues)."""
    report = runner._ProgressWriter.on_progress

    def on_progress(self: runner._ProgressWriter, event: object) -> None:
        report(self, event)  # type: ignore[arg-type]
        if getattr(event, "kind", "") == "epoch":
            runner.SHUTDOWN.set()

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(runner._ProgressWriter, "on_progress", on_progress)
            runner.train_job(ctx, job_id)
    finally:
        runner.SHUTDOWN.clear()


def test_shutdown_requeues_and_the_next_run_resumes(
    ctx: ServiceContext, inputs: dict[str, Path], published: list[Message]
) -> None:
    job_id = stored_job(ctx, inputs["model"], inputs["data"], epochs=2)
    runner.validate_job(ctx, job_id)
    _train_until_shutdown_after_epoch_1(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.epoch, job.lease_owner, job.attempts) == (jobs.QUEUED, 1, None, 0)
    assert published[-1] == Message(TASK_TRAIN, job_id)
    assert any((ctx.settings.work_dir / job_id / "checkpoints").iterdir())
    runner.train_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert job.status == jobs.SUCCEEDED
    assert job.metrics is not None and job.metrics["resumed_from_epoch"] == 1


def test_a_leased_job_is_left_alone(ctx: ServiceContext, inputs: dict[str, Path], published: list[Message]) -> None:
    job_id = stored_job(ctx, inputs["model"], inputs["data"])
    with session_scope(ctx.sessions) as session:
        assert jobs.acquire_lease(session, job_id, "someone-else", (jobs.VALIDATING,), 60, 3)
    runner.validate_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.lease_owner) == (jobs.VALIDATING, "someone-else")
    assert published == [Message(TASK_VALIDATE, job_id)]


def test_a_lam_restart_is_told_in_the_job_events(
    ctx: ServiceContext, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every weight counted as dead (threshold 10): one restart, then the run ends; events and metrics say so."""
    from dwf_core import defaults

    monkeypatch.setattr(defaults, "DEAD_THRESHOLD", 10.0)
    monkeypatch.setattr(defaults, "MAX_LAM_RESTARTS", 1)
    # init "balanced" as asked: the test model's random weights would get VarMatch (dwf_core.init_decision), whose
    # cut at 0.9 costs enough accuracy to add a fine-tuning epoch to the events.
    job_id = stored_job(ctx, inputs["model"], inputs["data"], target_sparsity=0.9, init="balanced")
    runner.validate_job(ctx, job_id)
    runner.train_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert job.status == jobs.SUCCEEDED and job.metrics is not None
    restarts = job.metrics["lam_restarts"]
    assert len(restarts) == 1 and restarts[0]["dead_sparsity"] == 1.0
    with ctx.sessions() as session:
        messages = session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        ).all()
    assert len(messages) == 2, messages  # the abandoned epoch 1 and the one epoch of the second attempt
    assert "100.00% of the weights are dead" in messages[0]
    assert f"training restarts with λ {restarts[0]['next_lam']:.3g}" in messages[0]
    assert "restarts" not in messages[1]


def test_a_divergence_restart_is_told_in_the_job_events(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    """LR 100 makes the loss NaN at step 4: one restart with the gradient norm clipped at 5, then the job succeeds."""
    job_id = stored_job(ctx, inputs["model"], inputs["data"], lr=100.0, init="balanced")
    runner.validate_job(ctx, job_id)
    runner.train_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert job.status == jobs.SUCCEEDED and job.metrics is not None
    [restart] = job.metrics["divergence_restarts"]
    assert (restart["epoch"], restart["step"], restart["lr_before"], restart["lr_after"]) == (1, 4, 100.0, 100.0)
    assert (job.metrics["lr"], job.metrics["max_grad_norm"]) == (100.0, 5.0)
    with ctx.sessions() as session:
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics").order_by(JobEvent.id)
        ).all()
    # The restart first (its data carries "restart", so the dashboard starts its charts over), then the one epoch.
    assert [e.level for e in events] == ["warn", "info"]
    assert events[0].data is not None and events[0].data["restart"] == restart
    assert events[0].message == (
        "training loss became nan at epoch 1, step 4 (peak lr 100, no gradient clipping): restart 1 of at most 3 "
        "from the initial weights with the gradient norm clipped at 5"
    )
    assert events[1].message.startswith("epoch 1/1: loss ")


def test_validation_tells_what_the_model_weights_score(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    """An uploaded ONNX graph with untrained weights: validation says so and training starts from VarMatch."""
    job_id = stored_job(ctx, inputs["model"], inputs["data"])
    runner.validate_job(ctx, job_id)
    with ctx.sessions() as session:
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
    [said] = [m for m in messages if m.startswith("the model's own weights score")]
    assert "do not predict the data (untrained): VarMatch init" in said
    assert any("parameters, 100% trainable" in m for m in messages if m.startswith("files validated"))


@pytest.mark.parametrize(
    ("timing", "eta"),
    [
        # 100 s into the fit, 10 s and 25 steps into the attempt after a restart: was 100 × 0.75 / 0.25 = 300 s.
        ({"global_step": 25, "elapsed_s": 100.0, "attempt": 2, "attempt_steps": 25, "attempt_elapsed_s": 10.0}, 30.0),
        # A run resumed at step 70, 5 steps and 5 s later: was 5 × 0.25 / 0.75 ≈ 1.7 s.
        ({"global_step": 75, "elapsed_s": 5.0, "attempt_steps": 5, "attempt_elapsed_s": 5.0}, 25.0),
    ],
    ids=["after-a-restart", "resumed"],
)
def test_the_job_eta_is_that_of_the_running_attempt(
    ctx: ServiceContext, inputs: dict[str, Path], timing: dict[str, Any], eta: float
) -> None:
    from dwf_core.train import ProgressEvent

    job_id = stored_job(ctx, inputs["model"], inputs["data"])
    with session_scope(ctx.sessions) as session:
        assert jobs.acquire_lease(session, job_id, "me", (jobs.VALIDATING,), 60, 3)
    event = ProgressEvent("step", 1, 4, 5, 25, total_steps=100, loss=1.0, lr=0.1, **timing)
    runner._ProgressWriter(ctx, job_id, "me").on_progress(event)
    job = job_row(ctx, job_id)
    assert (job.progress, job.eta_seconds) == (pytest.approx(timing["global_step"] / 100), pytest.approx(eta))


def test_another_worker_resumes_from_the_blob_checkpoint(
    ctx: ServiceContext, inputs: dict[str, Path], published: list[Message]
) -> None:
    """Issue 15: the first worker stops after epoch 1 and its machine is gone (work dir deleted); the next worker
    restores the epoch-1 checkpoint from the blob store and resumes there; the blob expires after the retention."""
    from dwf_service.blob_checkpoints import expire_checkpoints

    job_id = stored_job(ctx, inputs["model"], inputs["data"], epochs=2)
    runner.validate_job(ctx, job_id)
    _train_until_shutdown_after_epoch_1(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.checkpoint_epoch) == (jobs.QUEUED, 1) and job.checkpoint_key
    first_key = job.checkpoint_key
    assert ctx.storage.size(first_key) > 0
    shutil.rmtree(ctx.settings.work_dir / job_id)  # another machine: nothing local
    runner.train_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert job.status == jobs.SUCCEEDED
    assert job.metrics is not None and job.metrics["resumed_from_epoch"] == 1
    assert job.checkpoint_epoch == 2 and job.checkpoint_key != first_key
    with pytest.raises(FileNotFoundError):
        ctx.storage.size(first_key)  # replaced by the epoch-2 blob
    with ctx.sessions() as session:
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
    assert "resuming from the checkpoint of epoch 1" in messages
    # Kept for the retention time, then deleted by the reconciler's pass.
    assert expire_checkpoints(ctx.sessions, ctx.storage, 3600.0) == []
    last_key = job.checkpoint_key
    assert last_key is not None
    assert expire_checkpoints(ctx.sessions, ctx.storage, 0.0) == [job_id]
    with pytest.raises(FileNotFoundError):
        ctx.storage.size(last_key)
    assert job_row(ctx, job_id).checkpoint_key is None


def test_the_lr_probe_is_told_in_the_job_events(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    """LR 100 asked with ``lr_probe``: the probe rules it out unclipped before the first epoch (no restart), says so."""
    job_id = stored_job(ctx, inputs["model"], inputs["data"], lr=100.0, lr_probe=True, init="balanced")
    runner.validate_job(ctx, job_id)
    runner.train_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert job.status == jobs.SUCCEEDED and job.metrics is not None
    probe = job.metrics["lr_probe"]
    assert probe["rungs"][0]["lr"] == 100.0 and probe["rungs"][0]["failed"] is not None
    assert probe["chosen"] >= 1 and job.metrics["divergence_restarts"] == []
    assert (job.metrics["lr"], job.metrics["max_grad_norm"]) == (probe["lr"], probe["max_grad_norm"])
    assert probe["max_grad_norm"] == 5.0  # the unclipped LR 100 failed: the run trains clipped (or slower)
    with ctx.sessions() as session:
        [event] = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.message.startswith("learning-rate probe"))
        ).all()
    assert event.data is not None and event.data["lr_probe"]["chosen"] == probe["chosen"]
    assert f"training with sgd, peak lr {probe['lr']:.3g}" in event.message
