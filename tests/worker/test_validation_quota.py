"""The epochs × examples quota for a dataset the API could not count (a CIFAR tarball): checked at validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from dwf_service import jobs, runner
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import DEFAULT_TENANT_ID, File, Tenant
from dwf_service.queue import TASK_TRAIN, Message
from tests.dwf_core.data.builders import write_cifar
from tests.service_helpers import job_row, stored_file


@pytest.fixture(scope="module")
def cifar_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CIFAR-10 binary .tar.gz of 12 training and 4 test images."""
    path = tmp_path_factory.mktemp("cifar") / "cifar-10-binary.tar.gz"
    write_cifar(path, "cifar10")
    return path


def _tarball_job(ctx: ServiceContext, tarball: Path, epochs: int) -> str:
    data_id = stored_file(ctx, tarball, "dataset", "tar.gz")
    with ctx.sessions() as session:
        file = session.get(File, data_id)
        assert file is not None and file.examples is None  # as an upload of a tarball: not counted by the API
    request = {
        "model": {"name": "lenet_300_100"},
        "dataset": {"file_id": data_id},
        "method": {"type": "dwf", "depth": 2, "epochs": epochs, "batch_size": 8, "dense_epochs": 1},
        "seed": 0,
    }
    with session_scope(ctx.sessions) as session:
        return jobs.create_job(session, request, file_ids={"dataset": data_id}).id


def _tenant_limit(ctx: ServiceContext, limit: int) -> None:
    with session_scope(ctx.sessions) as session:
        session.execute(update(Tenant).where(Tenant.id == DEFAULT_TENANT_ID).values(max_epoch_examples=limit))


def test_tarball_over_the_tenants_quota_fails_at_validation(
    ctx: ServiceContext, cifar_tarball: Path, published: list[Message]
) -> None:
    _tenant_limit(ctx, 20)  # the service default (1e8) stays; the tenant's own limit overrides it
    job_id = _tarball_job(ctx, cifar_tarball, epochs=2)
    runner.validate_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.error_code, job.error_param) == (
        jobs.FAILED,
        "epoch_examples_quota_exceeded",
        "method.epochs",
    )
    # 2 epochs + 1 dense epoch over the 11 examples left for training after the 10% validation split.
    assert job.error_message == (
        "3 epochs × 11 training examples (counted at validation) = 33 is over this tenant's limit of 20 examples "
        "per job; lower method.epochs or use a smaller dataset"
    )
    assert Message(TASK_TRAIN, job_id) not in published


def test_tarball_within_the_tenants_quota_is_queued(
    ctx: ServiceContext, cifar_tarball: Path, published: list[Message]
) -> None:
    _tenant_limit(ctx, 36)  # 3 epochs × at most 12 examples
    job_id = _tarball_job(ctx, cifar_tarball, epochs=2)
    runner.validate_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert (job.status, job.error_code) == (jobs.QUEUED, None), job.error_message
    assert published[-1] == Message(TASK_TRAIN, job_id)
