"""Sweeps: a grid of ordinary jobs (the children, ``Job.sweep_id``), their derived status, cancel and the frontier.

A sweep is created in one transaction with all its children (all or none: the quota counts every child); each
child is a normal job that any worker may run. When a child ends, ``jobs._ended`` enqueues ``finalize_sweep`` (after
commit); the task does nothing until every child has ended, then stores frontier.json and frontier.png as
SweepArtifact rows and sets ``finished_at``, guarded so two deliveries store them once. A lost finalize message is
re-sent by ``reconcile_sweeps`` (the reconciler's pass). Imports no dwf_core and no API code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from dwf_service import jobs
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job, Sweep, SweepArtifact, new_id, utcnow
from dwf_service.queue import TASK_FINALIZE_SWEEP, enqueue
from dwf_service.settings import Settings
from dwf_service.sweep_frontier import FRONTIER_JSON, FRONTIER_PNG, frontier, plot_png

log = logging.getLogger(__name__)

# The method fields a grid may vary, in the order the children are expanded (the last one varies fastest).
GRID_FIELDS = ("type", "depth", "lam", "target_sparsity", "target_macs")

# Sweep statuses. While children run: queued (none started) or running; once all ended, "finalizing" until the
# frontier is stored, then succeeded (every child succeeded), failed (none did), partially_failed (some did) or
# cancelled (the sweep was cancelled).
QUEUED, RUNNING, FINALIZING = "queued", "running", "finalizing"
SUCCEEDED, FAILED, PARTIALLY_FAILED, CANCELLED = "succeeded", "failed", "partially_failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, PARTIALLY_FAILED, CANCELLED)


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid`` (field → values), fields in GRID_FIELDS order."""
    fields = [f for f in GRID_FIELDS if grid.get(f)]
    unknown = set(grid) - set(GRID_FIELDS)
    if unknown:
        raise ValueError(f"grid fields {sorted(unknown)} are not among {list(GRID_FIELDS)}")
    return [dict(zip(fields, values, strict=True)) for values in itertools.product(*(grid[f] for f in fields))]


def child_request(request: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """A child's job request: the sweep's base request with the grid point's values in its method."""
    child = {k: v for k, v in request.items() if k != "grid"}
    child["method"] = {**request["method"], **point}
    return child


def point_of(job: Job, grid: dict[str, list[Any]]) -> dict[str, Any]:
    """The grid values of a child (read back from its method)."""
    method = job.request.get("method", {})
    return {f: method.get(f) for f in GRID_FIELDS if grid.get(f)}


def create_sweep(
    session: Session,
    request: dict[str, Any],
    children: Sequence[dict[str, Any]],
    *,
    file_ids: dict[str, str | None],
    tenant_id: str,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> Sweep:
    """Insert the sweep and one job per child request (each enqueued for validation after commit)."""
    now = utcnow()
    sweep = Sweep(
        id=new_id("swp"),
        tenant_id=tenant_id,
        request=request,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_at=now,
        updated_at=now,
    )
    session.add(sweep)
    session.flush()
    for child in children:
        jobs.create_job(session, child, file_ids=file_ids, tenant_id=tenant_id, sweep_id=sweep.id)
    return sweep


def children_of(session: Session, sweep_id: str) -> list[Job]:
    """The sweep's jobs in creation (grid) order."""
    return children_by_sweep(session, [sweep_id])[sweep_id]


def children_by_sweep(session: Session, sweep_ids: Sequence[str]) -> dict[str, list[Job]]:
    """Each sweep's jobs in creation (grid) order, for all ``sweep_ids`` in one query (a page of sweeps is one
    round trip, not one per sweep); a sweep without jobs maps to an empty list."""
    by_sweep: dict[str, list[Job]] = {sweep_id: [] for sweep_id in sweep_ids}
    if not by_sweep:
        return by_sweep
    query = select(Job).where(Job.sweep_id.in_(list(by_sweep))).order_by(Job.created_at, Job.id)
    for job in session.scalars(query):
        assert job.sweep_id is not None
        by_sweep[job.sweep_id].append(job)
    return by_sweep


def sweep_status(sweep: Sweep, statuses: Sequence[str]) -> str:
    """The sweep's status from its children's (see the module's constants)."""
    if any(s in jobs.ACTIVE for s in statuses):
        started = any(s not in (jobs.VALIDATING, jobs.QUEUED) for s in statuses)
        return RUNNING if started else QUEUED
    if sweep.finished_at is None:
        return FINALIZING
    if sweep.cancel_requested and jobs.CANCELLED in statuses:
        return CANCELLED
    succeeded = sum(1 for s in statuses if s == jobs.SUCCEEDED)
    if succeeded == len(statuses):
        return SUCCEEDED
    return FAILED if succeeded == 0 else PARTIALLY_FAILED


def status_counts(statuses: Sequence[str]) -> dict[str, int]:
    """Children per job status (every status present, zeros included)."""
    counts = Counter(statuses)
    return {s: counts.get(s, 0) for s in jobs.STATUSES}


def request_cancel(session: Session, sweep_id: str) -> None:
    """Mark the sweep cancelled and cancel every unfinished child (at once if not started, else at its next step)."""
    session.execute(update(Sweep).where(Sweep.id == sweep_id).values(cancel_requested=True, updated_at=utcnow()))
    for job_id in session.scalars(select(Job.id).where(Job.sweep_id == sweep_id, Job.status.in_(jobs.ACTIVE))):
        jobs.request_cancel(session, job_id)


def child_summary(job: Job, grid: dict[str, list[Any]]) -> dict[str, Any]:
    """What frontier.json needs of a child."""
    return {"job_id": job.id, "point": point_of(job, grid), "status": job.status, "metrics": job.metrics or {}}


def finalize_sweep(ctx: ServiceContext, sweep_id: str) -> bool:
    """Store frontier.json/.png and set ``finished_at`` once every child has ended; True when this call did.

    Idempotent: a sweep with unfinished children, or already finalized, is left as it is. The blobs go under keys of
    this call only; the rows are inserted only if this call's guarded update set ``finished_at`` (else its blobs are
    deleted), so two concurrent deliveries store one set.
    """
    with ctx.sessions() as session:
        sweep = session.get(Sweep, sweep_id)
        if sweep is None or sweep.finished_at is not None:
            return False
        grid = sweep.request.get("grid", {})
        children = children_of(session, sweep_id)
        if any(job.status in jobs.ACTIVE for job in children):
            return False
        content = frontier(sweep_id, [child_summary(job, grid) for job in children])
    files = {
        FRONTIER_JSON: json.dumps(jobs.jsonable(content), indent=2).encode(),
        FRONTIER_PNG: plot_png(content),
    }
    run = uuid.uuid4().hex[:12]
    stored: list[SweepArtifact] = []
    try:
        for name, data in files.items():
            key = f"sweeps/{sweep_id}/{run}/{name}"
            size, sha = ctx.storage.put_stream(key, io.BytesIO(data))
            assert sha == hashlib.sha256(data).hexdigest()
            stored.append(SweepArtifact(sweep_id=sweep_id, name=name, bytes=size, sha256=sha, storage_key=key))
        with session_scope(ctx.sessions) as session:
            result = session.execute(
                update(Sweep)
                .where(Sweep.id == sweep_id, Sweep.finished_at.is_(None))
                .values(finished_at=utcnow(), updated_at=utcnow())
            )
            assert isinstance(result, CursorResult)
            won = result.rowcount == 1
            if won:
                session.add_all(stored)
    except BaseException:
        _delete_blobs(ctx, stored)
        raise
    if not won:
        _delete_blobs(ctx, stored)
    else:
        log.info(
            "sweep %s finalized: %d children, %d on the front",
            sweep_id,
            len(children),
            len(content["compression_front"]),
        )
    return won


def _delete_blobs(ctx: ServiceContext, rows: Sequence[SweepArtifact]) -> None:
    for row in rows:
        with contextlib.suppress(Exception):
            ctx.storage.delete(row.storage_key)


def reconcile_sweeps(session: Session, settings: Settings) -> list[str]:
    """Re-send ``finalize_sweep`` for sweeps whose children all ended ``requeue_after_seconds`` ago but that are not
    finalized (the message was lost); a sweep is re-sent at most once per that interval. Returns the sweep ids."""
    stale = utcnow() - timedelta(seconds=settings.requeue_after_seconds)
    waiting = session.scalars(select(Sweep).where(Sweep.finished_at.is_(None), Sweep.updated_at < stale)).all()
    touched: list[str] = []
    for sweep in waiting:
        rows = session.execute(select(Job.status, Job.finished_at).where(Job.sweep_id == sweep.id)).all()
        if not rows or any(r.status in jobs.ACTIVE for r in rows):
            continue
        if max((r.finished_at for r in rows if r.finished_at is not None), default=stale) > stale:
            continue  # its last child's own message is still fresh
        session.execute(update(Sweep).where(Sweep.id == sweep.id).values(updated_at=utcnow()))
        enqueue(session, TASK_FINALIZE_SWEEP, sweep.id)
        touched.append(sweep.id)
    if touched:
        log.info("re-sent finalize for sweeps %s", touched)
    return touched
