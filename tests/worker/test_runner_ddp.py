"""A job with method.devices = 2 through the worker's task bodies (dwf_service.runner): 2 gloo CPU processes train
it (rank 0 in the worker's process keeps the lease, progress and cancel), on a real SQLite database and storage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dwf_service import jobs, runner
from dwf_service.context import ServiceContext
from tests.service_helpers import job_row, mlp_onnx, mnist_npz, stored_job, train_cancelled_at_step


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small MNIST subset and an ONNX MLP."""
    d = tmp_path_factory.mktemp("inputs")
    return {"data": mnist_npz(d / "mnist.npz", 300, 100), "model": mlp_onnx(d / "mlp.onnx", hidden=(32,))}


def test_a_two_process_job_matches_the_one_process_job(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    results = {}
    for devices in (1, 2):
        job_id = stored_job(ctx, inputs["model"], inputs["data"], epochs=2, target_sparsity=0.9, devices=devices)
        runner.validate_job(ctx, job_id)
        runner.train_job(ctx, job_id)
        job = job_row(ctx, job_id)
        assert (job.status, job.error_code) == (jobs.SUCCEEDED, None), job.error_message
        assert job.metrics is not None
        assert job.metrics["processes"] == devices and job.metrics["config"]["devices"] == devices
        results[devices] = job.metrics
    one, two = results[1], results[2]
    # Same global batch, same updates up to float summation order (tests/dwf_core/test_distributed.py): at most one
    # of the 100 test examples and 1% of the kept weights may differ (measured: identical).
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=0.011)
    assert two["nnz"] == pytest.approx(one["nnz"], rel=0.01)
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)


def test_cancel_stops_a_two_process_job(ctx: ServiceContext, inputs: dict[str, Path]) -> None:
    job_id = stored_job(ctx, inputs["model"], inputs["data"], epochs=50, devices=2)
    runner.validate_job(ctx, job_id)
    # Children of this process before the run (in a whole test run, servers of session fixtures).
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    before = set(children.read_text().split())
    polls = train_cancelled_at_step(ctx, job_id)
    job = job_row(ctx, job_id)
    # The lease's should_stop is asked in this process only (rank 0), once per step, and both ranks stop together.
    assert job.status == jobs.CANCELLED and polls == 10
    assert not set(children.read_text().split()) - before
