"""/v1/sweeps: create a grid of jobs (idempotent, all within quota or none), list, get, cancel, artifacts.

Each grid point becomes an ordinary job (``sweep_id`` set), validated exactly as a POST /v1/jobs body would be; a
bad point answers 422 naming ``grid.<field>`` and creates nothing. Tenant-scoped like jobs: another tenant's sweep
answers 404.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from pydantic import ValidationError
from sqlalchemy import select

from api import idempotency
from api.deps import ContextDep, CurrentTenant, SessionDep
from api.downloads import blob_download
from api.errors import ApiError, ErrorResponse
from api.idempotency import IdempotencyKey
from api.render import newest_first_page, rfc3339
from api.routes.jobs import check_job_files
from api.schemas import ArtifactList, ArtifactOut, JobCreate
from api.sweep_schemas import SweepChild, SweepCreate, SweepList, SweepOut
from dwf_service import quotas, sweeps
from dwf_service.models import Job, Sweep, SweepArtifact, Tenant
from dwf_service.settings import Settings
from dwf_service.sweep_frontier import mac_fraction

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


def _child_bodies(body: SweepCreate, settings: Settings) -> tuple[list[JobCreate], list[dict[str, Any]]]:
    """Each grid point's job body, validated as POST /v1/jobs validates one; 422 naming the point otherwise."""
    grid = body.grid.model_dump(exclude_none=True)
    points = sweeps.grid_points(grid)
    if len(points) > settings.sweep_max_children:
        sizes = " × ".join(str(len(v)) for v in grid.values())
        raise ApiError(
            422,
            "sweep_too_large",
            f"the grid has {sizes} = {len(points)} points; at most {settings.sweep_max_children} per sweep "
            "(DWF_SWEEP_MAX_CHILDREN)",
            param="grid",
        )
    base = body.model_dump(mode="json", exclude_none=True, exclude={"grid"})
    children: list[JobCreate] = []
    for point in points:
        try:
            children.append(JobCreate.model_validate(sweeps.child_request(base, point)))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = [str(p) for p in first.get("loc", ())]
            field = loc[1] if len(loc) > 1 and loc[0] == "method" else None
            if field in point:
                param = f"grid.{field}"
            elif _valid(base):  # the base alone is fine: the point's values clash with it (e.g. lam with a target)
                param = f"grid.{next(iter(point))}"
            else:
                param = ".".join(loc) or "method"
            where = ", ".join(f"{k}={v}" for k, v in point.items())
            msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
            message = f"grid point ({where}): {'.'.join(loc)}: {msg}"
            raise ApiError(422, "invalid_grid_point", message, param=param) from None
    return children, points


def _valid(request: dict[str, Any]) -> bool:
    try:
        JobCreate.model_validate(request)
    except ValidationError:
        return False
    return True


def sweep_out(session: SessionDep, sweep: Sweep, children: list[Job] | None = None) -> SweepOut:
    """The public view of a sweep, its children included (at most DWF_SWEEP_MAX_CHILDREN); ``children`` when the
    caller loaded them already (a page of sweeps loads all its children in one query)."""
    grid: dict[str, list[Any]] = sweep.request.get("grid", {})
    if children is None:
        children = sweeps.children_of(session, sweep.id)
    statuses = [job.status for job in children]
    base = f"/v1/sweeps/{sweep.id}"
    req = sweep.request
    return SweepOut(
        id=sweep.id,
        status=sweeps.sweep_status(sweep, statuses),
        model=req["model"],
        weights_file_id=req.get("weights_file_id"),
        dataset=req["dataset"],
        method=req.get("method", {}),
        seed=req.get("seed", 0),
        metadata=req.get("metadata"),
        grid=grid,
        counts=sweeps.status_counts(statuses),
        children=[_child_out(job, grid) for job in children],
        cancel_requested=sweep.cancel_requested,
        created_at=rfc3339(sweep.created_at) or "",
        finished_at=rfc3339(sweep.finished_at),
        urls={"self": base, "cancel": f"{base}/cancel", "artifacts": f"{base}/artifacts"},
    )


def _child_out(job: Job, grid: dict[str, list[Any]]) -> SweepChild:
    metrics = job.metrics or {}

    def number(name: str) -> float | None:
        value = metrics.get(name)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    done = job.status == "succeeded"
    return SweepChild(
        job_id=job.id,
        point=sweeps.point_of(job, grid),
        status=job.status,
        epoch=job.epoch,
        epochs=job.epochs,
        # While a child trains, its metrics are the last epoch's (validation); the test numbers come at the end.
        test_accuracy=number("test_accuracy") if done else None,
        sparsity=number("sparsity") if done else None,
        compression_ratio=number("compression_ratio") if done else None,
        mac_fraction=mac_fraction(metrics) if done else None,
        error_code=job.error_code,
        url=f"/v1/jobs/{job.id}",
    )


def _owned_sweep(session: SessionDep, tenant: Tenant, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or sweep.tenant_id != tenant.id:
        raise ApiError(404, "sweep_not_found", f"no sweep {sweep_id!r}", param="sweep_id")
    return sweep


@router.post("", response_model=SweepOut, responses={429: {"model": ErrorResponse}})
def create_sweep(
    idempotency_key: IdempotencyKey,  # first: on SQLite its claim is taken before the session and freed after it
    ctx: ContextDep,
    session: SessionDep,
    tenant: CurrentTenant,
    body: SweepCreate,
) -> SweepOut:
    """Create one job per grid point (the cartesian product of ``grid``), each a normal job any worker may run.

    All or nothing: a bad point (422 ``invalid_grid_point``, param ``grid.<field>``), a grid over
    DWF_SWEEP_MAX_CHILDREN (422 ``sweep_too_large``) or children that would take the tenant over its active-jobs
    quota (429 with Retry-After) create nothing. ``Idempotency-Key`` works as for POST /v1/jobs.
    """
    request = body.model_dump(mode="json", exclude_none=True)
    request_hash = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    if idempotency_key is not None:
        idempotency.lock_claim(session, tenant.id, idempotency_key)
    quotas.lock_tenant(session, tenant)
    if idempotency_key is not None:
        existing = idempotency.earlier_request(session, ctx.settings, Sweep, tenant.id, idempotency_key, request_hash)
        if existing is not None:
            return sweep_out(session, existing)
    children, _points = _child_bodies(body, ctx.settings)
    dataset = check_job_files(session, tenant, children[0])
    epochs = max(c.method.epochs + c.method.dense_epochs for c in children)
    quotas.check_new_job(session, ctx.settings, tenant, epochs=epochs, examples=dataset.examples, count=len(children))
    file_ids = {"model": body.model.file_id, "weights": body.weights_file_id, "dataset": body.dataset.file_id}
    sweep = sweeps.create_sweep(
        session,
        request,
        [c.model_dump(mode="json", exclude_none=True) for c in children],
        file_ids=file_ids,
        tenant_id=tenant.id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    return sweep_out(session, sweep)


@router.get("", response_model=SweepList)
def list_sweeps(
    session: SessionDep,
    tenant: CurrentTenant,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SweepList:
    """The caller's sweeps, newest first (ids sort by creation time)."""
    query = select(Sweep).where(Sweep.tenant_id == tenant.id).order_by(Sweep.id.desc()).limit(limit + 1)
    if after is not None:
        query = query.where(Sweep.id < after)
    rows = list(session.scalars(query))
    children = sweeps.children_by_sweep(session, [s.id for s in rows[:limit]])
    page = [sweep_out(session, s, children[s.id]) for s in rows[:limit]]
    return SweepList(**newest_first_page(page, len(rows) > limit))


@router.get("/{sweep_id}", response_model=SweepOut)
def get_sweep(session: SessionDep, tenant: CurrentTenant, sweep_id: str) -> SweepOut:
    """One sweep with its children's status and headline metrics."""
    return sweep_out(session, _owned_sweep(session, tenant, sweep_id))


@router.post("/{sweep_id}/cancel", response_model=SweepOut)
def cancel_sweep(session: SessionDep, tenant: CurrentTenant, sweep_id: str) -> SweepOut:
    """Cancel every unfinished child (finished ones keep their results); 409 once the sweep has finished."""
    sweep = _owned_sweep(session, tenant, sweep_id)
    if sweep.finished_at is not None:
        raise ApiError(409, "sweep_finished", f"sweep {sweep.id} has already finished", param="sweep_id")
    sweeps.request_cancel(session, sweep.id)
    session.refresh(sweep)
    return sweep_out(session, sweep)


def _artifact_out(sweep_id: str, row: SweepArtifact) -> ArtifactOut:
    return ArtifactOut(
        name=row.name, bytes=row.bytes, sha256=row.sha256, url=f"/v1/sweeps/{sweep_id}/artifacts/{row.name}"
    )


@router.get("/{sweep_id}/artifacts", response_model=ArtifactList)
def list_sweep_artifacts(session: SessionDep, tenant: CurrentTenant, sweep_id: str) -> ArtifactList:
    """frontier.json and frontier.png once every child has ended (empty before)."""
    sweep = _owned_sweep(session, tenant, sweep_id)
    rows = session.scalars(
        select(SweepArtifact).where(SweepArtifact.sweep_id == sweep.id).order_by(SweepArtifact.name)
    ).all()
    return ArtifactList(data=[_artifact_out(sweep.id, a) for a in rows])


@router.get("/{sweep_id}/artifacts/{name}", response_model=None)
def download_sweep_artifact(
    ctx: ContextDep,
    session: SessionDep,
    tenant: CurrentTenant,
    sweep_id: str,
    name: str,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """One sweep artifact, as a job's (api/downloads.py: streamed, or a 307 to a presigned S3 URL)."""
    sweep = _owned_sweep(session, tenant, sweep_id)
    row = session.scalar(select(SweepArtifact).where(SweepArtifact.sweep_id == sweep.id, SweepArtifact.name == name))
    if row is None:
        raise ApiError(404, "artifact_not_found", f"sweep {sweep.id} has no artifact {name!r}", param="name")
    return blob_download(
        ctx, storage_key=row.storage_key, name=row.name, size=row.bytes, sha256=row.sha256, if_none_match=if_none_match
    )
