"""/v1/jobs: create (idempotent, within quota), list, get, cancel, events (paged or server-sent), artifacts.

Every route sees only the calling tenant's jobs: another tenant's job (or file) answers 404 like a missing one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import bindparam, select

from api import from_job, idempotency
from api.deps import ContextDep, CurrentJob, CurrentTenant, SessionDep, bearer_key, check_key, owned_file
from api.downloads import blob_download
from api.errors import ApiError, ErrorResponse
from api.idempotency import IdempotencyKey
from api.render import JobFields, artifact_out, event_out, job_out, newest_first_page
from api.routes.webhooks import checked_webhook
from api.schemas import ArtifactList, EventList, JobCreate, JobList, JobOut, JobSubmit, WebhookOut
from dwf_core.hf_config import FORMAT_HF_CONFIG
from dwf_service import jobs, quotas
from dwf_service.auth import key_matches, lookup_prefix
from dwf_service.context import ServiceContext
from dwf_service.db import autocommit_connection
from dwf_service.models import ApiKey, Artifact, File, Job, JobEvent, Tenant

router = APIRouter(prefix="/jobs", tags=["jobs"])
# GET /v1/jobs/{id} alone: it checks the key itself, in the same thread-pool trip as the read (see api/deps.py).
status_router = APIRouter(prefix="/jobs", tags=["jobs"])
Status = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
SSE_POLL_S = 0.5
SSE_KEEPALIVE_S = 15.0


def _check_file(session: SessionDep, tenant: Tenant, file_id: str, purpose: str, param: str) -> File:
    file = owned_file(session, tenant.id, file_id)
    if file is None:
        raise ApiError(404, "file_not_found", f"no file {file_id!r}", param=param)
    if file.purpose != purpose:
        raise ApiError(422, "wrong_purpose", f"{file_id} was uploaded as {file.purpose}, not {purpose}", param=param)
    return file


def check_job_files(session: SessionDep, tenant: Tenant, body: JobCreate) -> File:
    """404/422 unless the body's model, weights and dataset files are the tenant's and fit together; the dataset."""
    if body.model.file_id is not None:
        model_file = _check_file(session, tenant, body.model.file_id, "model", "model.file_id")
        # A transformers config.json is an architecture only: its weights may come as a file; an ONNX graph has its own.
        if body.weights_file_id is not None and model_file.format != FORMAT_HF_CONFIG:
            raise ApiError(
                422,
                "weights_with_onnx",
                "an ONNX model carries its own weights; drop weights_file_id",
                param="weights_file_id",
            )
    if body.weights_file_id is not None:
        _check_file(session, tenant, body.weights_file_id, "weights", "weights_file_id")
    return _check_file(session, tenant, body.dataset.file_id, "dataset", "dataset.file_id")


@router.post("", response_model=JobOut, responses={429: {"model": ErrorResponse}})
def create_job(
    idempotency_key: IdempotencyKey,  # first: on SQLite its claim is taken before the session and freed after it
    ctx: ContextDep,
    session: SessionDep,
    tenant: CurrentTenant,
    body: JobSubmit,
) -> JobOut:
    """Create a DWF job; it is validated first (status validating_files), then queued for training.

    Answers 404 for a file id the caller does not own and 429 (with Retry-After) over one of the tenant's quotas.
    With ``from_job`` the job continues that finished job from its trained factors (rules: api/from_job.py).
    A repeat of an ``Idempotency-Key`` within DWF_IDEMPOTENCY_KEY_TTL_SECONDS (24 h) of its job's creation answers
    that job (409 ``idempotency_key_reused`` with another body); an older key is new again. A repeat that arrives
    while the first request with the key is still being processed answers 409 ``idempotency_key_in_use`` with
    Retry-After: 1 at once, creating nothing (api/idempotency.py).
    """
    request = body.model_dump(mode="json", exclude_none=True)
    # The webhook goes to the job's own columns: its secret is never kept in (nor hashed into) the request.
    webhook_in = request.pop("webhook", None)
    hashed = request if webhook_in is None else {**request, "webhook": {"url": webhook_in["url"]}}
    request_hash = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
    webhook = checked_webhook(ctx.settings, body.webhook, param="webhook.url")
    if idempotency_key is not None:
        # PostgreSQL: the key's claim, before any other lock (on SQLite claim_sqlite took it before the session).
        idempotency.lock_claim(session, tenant.id, idempotency_key)
    # A tenant's submits take turns from here to the commit, so the key lookup, the quota check and the insert see
    # every submit that went before (a repeat that got the key's claim after the first committed replays its job).
    quotas.lock_tenant(session, tenant)
    if idempotency_key is not None:
        existing = idempotency.earlier_request(session, ctx.settings, Job, tenant.id, idempotency_key, request_hash)
        if existing is not None:
            return job_out(existing)
    # With from_job: the parent's model, dataset and method settings under the body's (api/from_job.py).
    job_body, parent = from_job.resolve(session, ctx.settings, tenant, body)
    if parent is not None:
        request = from_job.stored_request(job_body, parent)
    dataset = check_job_files(session, tenant, job_body)
    epochs = job_body.method.epochs + job_body.method.dense_epochs  # the dense phase trains on the same examples
    quotas.check_new_job(session, ctx.settings, tenant, epochs=epochs, examples=dataset.examples)
    model_id, dataset_id = job_body.model.file_id, job_body.dataset.file_id
    file_ids = {"model": model_id, "weights": job_body.weights_file_id, "dataset": dataset_id}
    job = jobs.create_job(
        session,
        request,
        file_ids=file_ids,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        tenant_id=tenant.id,
        webhook=(webhook.url, webhook.secret) if webhook is not None else None,
    )
    if parent is not None:
        job.parent_job_id = parent.id  # written with the insert's commit
    out = job_out(job)
    if webhook is not None and webhook.generated:
        out.webhook = WebhookOut(url=webhook.url, secret=webhook.secret)  # shown this once
    return out


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    tenant: CurrentTenant,
    status: Status | None = None,
    sweep_id: Annotated[str | None, Query(max_length=40)] = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    """The caller's jobs, newest first (ids sort by creation time); filtered (by status, by sweep) before limiting."""
    query = select(Job).where(Job.tenant_id == tenant.id).order_by(Job.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(Job.status == status)
    if sweep_id is not None:
        query = query.where(Job.sweep_id == sweep_id)
    if after is not None:
        query = query.where(Job.id < after)
    rows = list(session.scalars(query))
    return JobList(**newest_first_page([job_out(j) for j in rows[:limit]], len(rows) > limit))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(session: SessionDep, job: CurrentJob) -> JobOut:
    """Cancel: at once before training starts, else at the next training step. The job is kept."""
    if job.status in (jobs.SUCCEEDED, jobs.FAILED):
        raise ApiError(409, "job_finished", f"job {job.id} already {job.status}", param="job_id")
    if job.status != jobs.CANCELLED:
        jobs.request_cancel(session, job.id)
        session.refresh(job)
    return job_out(job)


def _event_cursor(after: str | None) -> int:
    if after is None:
        return 0
    try:
        return int(after.removeprefix("evt-"))
    except ValueError:
        raise ApiError(422, "invalid_value", "after must be an event id like evt-12", param="after") from None


def _sse(ctx: ServiceContext, job_id: str, cursor: int) -> Iterator[str]:
    last_send = time.monotonic()
    while True:
        with ctx.sessions() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            rows = session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > cursor).order_by(JobEvent.id).limit(100)
            ).all()
        for row in rows:
            cursor = row.id
            yield f"id: evt-{row.id}\nevent: {row.type}\ndata: {event_out(row).model_dump_json()}\n\n"
            last_send = time.monotonic()
        if not rows and status in jobs.TERMINAL:
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if time.monotonic() - last_send > SSE_KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_send = time.monotonic()
        if not rows:
            time.sleep(SSE_POLL_S)


@router.get("/{job_id}/events", response_model=EventList)
def list_events(
    ctx: ContextDep,
    session: SessionDep,
    job: CurrentJob,
    request: Request,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    stream: bool = False,
) -> EventList | StreamingResponse:
    """The job's events, oldest first; ``stream=true`` answers server-sent events until the job ends."""
    cursor = _event_cursor(after)
    if stream:
        cursor = _event_cursor(request.headers.get("last-event-id")) or cursor
        return StreamingResponse(
            _sse(ctx, job.id, cursor), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    rows = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.id > cursor).order_by(JobEvent.id).limit(limit + 1)
    ).all()
    return EventList(data=[event_out(e) for e in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{job_id}/artifacts", response_model=ArtifactList)
def list_artifacts(session: SessionDep, job: CurrentJob) -> ArtifactList:
    """The job's output files (empty until it succeeds)."""
    rows = session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.name)).all()
    return ArtifactList(data=[artifact_out(a) for a in rows])


@router.get("/{job_id}/artifacts/{name}", response_model=None)
def download_artifact(
    ctx: ContextDep,
    session: SessionDep,
    job: CurrentJob,
    name: str,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Stream one artifact with its Content-Length and sha256 ETag; on S3 storage, answer 307 to a short-lived
    presigned URL instead (DWF_S3_PRESIGN_DOWNLOADS, DWF_S3_PRESIGN_EXPIRY_SECONDS): follow it without the API key."""
    artifact = session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name))
    if artifact is None:
        raise ApiError(404, "artifact_not_found", f"job {job.id} has no artifact {name!r}", param="name")
    return blob_download(
        ctx,
        storage_key=artifact.storage_key,
        name=artifact.name,
        size=artifact.bytes,
        sha256=artifact.sha256,
        if_none_match=if_none_match,
    )


# Built once, with only the columns job_out reads: building and cache-keying the statement per request, and the
# result metadata of every jobs column, cost about as much as the round trip itself (profiled on PostgreSQL).
_STATUS_QUERY = (
    select(*(getattr(Job, name) for name in JobFields.__annotations__), ApiKey.salt, ApiKey.key_hash)
    .join(ApiKey, ApiKey.tenant_id == Job.tenant_id)
    .where(Job.id == bindparam("job_id"), ApiKey.prefix == bindparam("prefix"), ApiKey.revoked.is_(False))
)


def _read_job(ctx: ServiceContext, key: str, job_id: str) -> JobOut:
    # One statement outside a transaction (this is the request clients poll): the job joined with its tenant's
    # active keys that share the presented key's prefix. Without a matching row the usual checks tell 401 from 404.
    prefix = lookup_prefix(key)
    if prefix is not None:
        with autocommit_connection(ctx.engine) as conn:
            rows = conn.execute(_STATUS_QUERY, {"job_id": job_id, "prefix": prefix}).all()
        for row in rows:
            if key_matches(row.salt, row.key_hash, key):
                return job_out(row)
    check_key(ctx, key)  # 401 for a bad key
    raise ApiError(404, "job_not_found", f"no job {job_id!r}", param="job_id")


@status_router.get("/{job_id}", response_model=JobOut)
async def get_job(ctx: ContextDep, job_id: str, authorization: Annotated[str | None, Header()] = None) -> JobOut:
    """One job (404 also for another tenant's job). Clients poll this: key check, read and render are one trip."""
    return await run_in_threadpool(_read_job, ctx, bearer_key(authorization), job_id)
