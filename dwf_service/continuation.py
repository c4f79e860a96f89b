"""The worker's side of a continued job (POST /v1/jobs with from_job): fetch the parent's trained state.

The parent's final checkpoint blob (``jobs.checkpoint_key`` of the parent) is unpacked into a folder of its own,
never the child's checkpoint folder: the child's own checkpoints still serve its resume (a child re-delivered
mid-training loads the parent's factors, then its own latest checkpoint over them). The blob is kept while the
child is unfinished (blob_checkpoints.expire_checkpoints); if it is gone anyway (deleted between the API's check
and the child's start), the child fails at once with ``parent_state_unavailable``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from dwf_service import jobs
from dwf_service.blob_checkpoints import restore_checkpoint
from dwf_service.db import session_scope
from dwf_service.models import Job

if TYPE_CHECKING:
    from dwf_service.context import ServiceContext

log = logging.getLogger(__name__)


def fetch_parent_state(ctx: ServiceContext, job: Job, dest: Path) -> Path | None:
    """Unpack the parent's final checkpoint into ``dest`` for a continued job and say so in its events; None for
    any other job.

    Raises:
        DwfError: ``parent_state_unavailable`` (param ``from_job``) when the blob is gone or cannot be unpacked.
    """
    from dwf_core.errors import DwfError

    parent_id = job.parent_job_id
    if parent_id is None:
        return None
    with ctx.sessions() as session:
        row = session.execute(select(Job.checkpoint_key, Job.checkpoint_epoch).where(Job.id == parent_id)).first()
    key, epoch = (row.checkpoint_key, row.checkpoint_epoch) if row is not None else (None, None)
    retention = f"DWF_CHECKPOINT_RETENTION_SECONDS={ctx.settings.checkpoint_retention_seconds:g}"
    if key is None:
        raise DwfError(
            f"the trained state of job {parent_id} is no longer kept (checkpoints are removed {retention} seconds "
            "after a job ends), so this job cannot start from it",
            code="parent_state_unavailable",
            param="from_job",
        )
    shutil.rmtree(dest, ignore_errors=True)
    try:
        restore_checkpoint(ctx.storage, key, dest, max_bytes=ctx.settings.checkpoint_max_bytes)
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:  # a missing object (S3 NoSuchKey, a local file gone), a damaged or oversized archive
        log.warning("parent state %s of %s not restored: %s", key, job.id, exc)
        shutil.rmtree(dest, ignore_errors=True)
        raise DwfError(
            f"the trained state of job {parent_id} could not be read from the blob store ({type(exc).__name__}); "
            f"this job cannot start from it",
            code="parent_state_unavailable",
            param="from_job",
        ) from exc
    with session_scope(ctx.sessions) as session:
        jobs.add_event(
            session,
            job.id,
            f"continuing from job {parent_id}: its trained factors after its last DWF epoch ({epoch})",
            data={"parent_job_id": parent_id, "parent_epoch": epoch},
        )
    return dest


def with_parent(metrics: dict[str, Any], job: Job) -> dict[str, Any]:
    """``metrics`` with the parent's id in ``continued_from`` (dwf_core fills in the epoch and sparsity)."""
    if job.parent_job_id is None or not isinstance(metrics.get("continued_from"), dict):
        return metrics
    return {**metrics, "continued_from": {"job_id": job.parent_job_id, **metrics["continued_from"]}}
