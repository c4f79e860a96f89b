"""Per-tenant quotas: jobs not yet finished, bytes stored, and epochs × training examples of one job.

Limits come from the Settings (``DWF_QUOTA_*``, 0 = unlimited), overridden per tenant by the tenant row's
``max_*`` columns. A check that fails raises ``QuotaExceeded``, which the API answers with 429 and Retry-After.

The training-example count of a dataset is read at upload from the file's headers (``count_examples``), so a
too-large job is refused when it is submitted, not after validation: npz and safetensors give ``y_train``'s
length, a CSV its data rows, an image-folder zip its images under ``train/`` (all images without split folders).
CSV and folder counts include the val/test rows, and npz/safetensors the val part still to be carved from
train, so the count is an upper bound. Tarballs and gzip files are not counted at upload (``None``): their jobs
are checked when the worker's validation has loaded the dataset (``check_validated_job``), which fails a job
over the quota with the same ``epoch_examples_quota_exceeded`` code as the API's 429.

Checks take the tenant's lock first (``lock_tenant``), held until the transaction ends, so the check and the
insert that follows are one atomic step and two concurrent requests of one tenant cannot both take the last slot:
the tenant row ``SELECT … FOR UPDATE`` on PostgreSQL, the database's write lock (``BEGIN IMMEDIATE``) on SQLite,
which has no row locks.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dwf_service.jobs import ACTIVE
from dwf_service.models import Artifact, File, Job, Tenant
from dwf_service.settings import Settings

MAX_SAFETENSORS_HEADER = 100 * 1024**2
_CHUNK = 1 << 20


class QuotaExceeded(Exception):
    """A request that would take a tenant over one of its quotas (HTTP 429)."""

    def __init__(self, code: str, message: str, retry_after: int, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after, self.param = code, message, retry_after, param

    def to_dict(self) -> dict[str, str | None]:
        """The job error ``{code, message, param}`` for a job that the worker ends over quota."""
        return {"code": self.code, "message": self.message, "param": self.param}


@dataclass(frozen=True)
class Limits:
    """A tenant's effective quotas (0 = unlimited)."""

    max_active_jobs: int
    max_stored_bytes: int
    max_epoch_examples: int


def limits_for(tenant: Tenant, settings: Settings) -> Limits:
    """The tenant's own limits where set, else the service defaults."""

    def pick(own: int | None, default: int) -> int:
        return default if own is None else own

    return Limits(
        max_active_jobs=pick(tenant.max_active_jobs, settings.quota_max_active_jobs),
        max_stored_bytes=pick(tenant.max_stored_bytes, settings.quota_max_stored_bytes),
        max_epoch_examples=pick(tenant.max_epoch_examples, settings.quota_max_epoch_examples),
    )


def active_jobs(session: Session, tenant_id: str) -> int:
    """The tenant's jobs in validating_files, queued or running."""
    query = select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
    return int(session.scalar(query) or 0)


def stored_bytes(session: Session, tenant_id: str) -> int:
    """Bytes of the tenant's uploads plus its jobs' artifacts."""
    files = session.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id))
    artifacts = session.scalar(
        select(func.coalesce(func.sum(Artifact.bytes), 0))
        .select_from(Artifact)
        .join(Job, Job.id == Artifact.job_id)
        .where(Job.tenant_id == tenant_id)
    )
    return int(files or 0) + int(artifacts or 0)


def lock_tenant(session: Session, tenant: Tenant) -> None:
    """Hold ``tenant``'s lock until the session's transaction ends; a concurrent holder is waited for.

    Read after this, the tenant's rows include everything a request that held the lock before committed.
    """
    if session.get_bind().dialect.name != "sqlite":
        session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
        return
    # SQLite: FOR UPDATE is ignored, so take the write lock that serializes all of its writers (waiting up to the
    # busy timeout). A deferred transaction would take it only at its first write, after the check had read.
    session.flush()  # pending rows first, or their INSERT would open a deferred transaction after this one
    connection = session.connection()
    # pysqlite opens a transaction only at the first write (or an explicit BEGIN): in one, the lock is held.
    if not getattr(connection.connection.dbapi_connection, "in_transaction", False):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def check_new_job(
    session: Session, settings: Settings, tenant: Tenant, *, epochs: int, examples: int | None, count: int = 1
) -> None:
    """Raise QuotaExceeded when ``count`` new jobs (a sweep's children: all or none) of ``epochs`` over
    ``examples`` training examples each are over quota."""
    limits = limits_for(tenant, settings)
    wait = settings.quota_retry_after_seconds
    if examples is not None:
        _check_epoch_examples(limits, wait, epochs, examples, "")
    if limits.max_active_jobs:
        lock_tenant(session, tenant)
        active = active_jobs(session, tenant.id)
        if active + count > limits.max_active_jobs:
            if count == 1:
                message = f"this tenant already has {active} unfinished jobs, its limit"
            else:
                message = (
                    f"this sweep's {count} jobs and the tenant's {active} unfinished jobs are over its limit of "
                    f"{limits.max_active_jobs}; none was created"
                )
            raise QuotaExceeded(
                "active_jobs_quota_exceeded",
                f"{message}; retry when one has finished (or cancel one)",
                wait,
            )


def _check_epoch_examples(limits: Limits, wait: int, epochs: int, examples: int, counted: str) -> None:
    limit = limits.max_epoch_examples
    if limit and epochs * examples > limit:
        raise QuotaExceeded(
            "epoch_examples_quota_exceeded",
            f"{epochs} epochs × {examples} training examples{counted} = {epochs * examples} is over this tenant's "
            f"limit of {limit} examples per job; lower method.epochs or use a smaller dataset",
            wait,
            param="method.epochs",
        )


def check_validated_job(session: Session, settings: Settings, job: Job, examples: int) -> None:
    """Raise QuotaExceeded when ``job``'s epochs × the ``examples`` its validation loaded for training is over quota.

    The API checked the upload's count, an upper bound, where it had one; this covers the datasets it could not
    count (tarballs, gzip) and any whose header count failed. Epochs include the dense phase, as at submit.
    """
    tenant = session.get(Tenant, job.tenant_id)
    if tenant is None:
        return
    method = job.request["method"]
    epochs = int(method["epochs"]) + int(method.get("dense_epochs") or 0)
    limits = limits_for(tenant, settings)
    _check_epoch_examples(limits, settings.quota_retry_after_seconds, epochs, examples, " (counted at validation)")


def check_storage(session: Session, settings: Settings, tenant: Tenant, incoming: int, *, lock: bool = True) -> None:
    """Raise QuotaExceeded when storing ``incoming`` more bytes takes the tenant over its storage quota.

    ``lock=False`` for an early check before a long upload: the row lock lasts until the transaction ends.
    """
    limit = limits_for(tenant, settings).max_stored_bytes
    if not limit:
        return
    if lock:
        lock_tenant(session, tenant)
    used = stored_bytes(session, tenant.id)
    if used + incoming > limit:
        raise QuotaExceeded(
            "storage_quota_exceeded",
            f"storing {incoming} more bytes would take this tenant to {used + incoming} bytes, over its limit of "
            f"{limit} (uploads plus job artifacts); delete files you no longer need",
            settings.quota_retry_after_seconds,
            param="file",
        )


def _npy_rows(fh: BinaryIO) -> int | None:
    import numpy as np

    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, _ = np.lib.format.read_array_header_2_0(fh)
    else:
        return None
    return int(shape[0]) if shape else None


def _count_npz(fh: BinaryIO) -> int | None:
    with zipfile.ZipFile(fh) as zf:
        names = set(zf.namelist())
        # x_*/y_* arrays, or a token dataset's input_ids_*/labels_* (dwf_core.data.tokens).
        labels = next((n for n in ("y_train.npy", "labels_train.npy") if n in names), None)
        if labels is None:
            return None
        with zf.open(labels) as member:
            return _npy_rows(member)  # type: ignore[arg-type]


def _count_safetensors(fh: BinaryIO) -> int | None:
    (size,) = struct.unpack("<Q", fh.read(8))
    if size > MAX_SAFETENSORS_HEADER:
        return None
    header = json.loads(fh.read(size))
    shape = header.get("y_train", {}).get("shape") if isinstance(header, dict) else None
    return int(shape[0]) if isinstance(shape, list) and shape else None


def _count_csv(fh: BinaryIO) -> int | None:
    lines, last = 0, b"\n"
    while chunk := fh.read(_CHUNK):
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    lines += last != b"\n"  # a last line without a newline
    return max(lines - 1, 0)  # minus the header row


def _count_image_zip(fh: BinaryIO) -> int | None:
    with zipfile.ZipFile(fh) as zf:
        names = [n for n in zf.namelist() if n.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".gif"))]
    train = [n for n in names if "train" in (p.lower() for p in n.split("/")[:-1])]
    return len(train or names)


_COUNTERS = {"npz": _count_npz, "safetensors": _count_safetensors, "csv": _count_csv, "zip": _count_image_zip}


def count_examples(fh: BinaryIO, fmt: str) -> int | None:
    """Training examples of a dataset upload of format ``fmt`` from its headers, or None (see the module doc)."""
    counter = _COUNTERS.get(fmt)
    if counter is None:
        return None
    fh.seek(0)
    try:
        return counter(fh)
    except (ValueError, OSError, EOFError, KeyError, TypeError, struct.error, zipfile.BadZipFile):
        return None  # validation in the worker reports what is wrong with the file
    finally:
        fh.seek(0)
