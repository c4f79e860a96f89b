"""ORM rows → response bodies (RFC 3339 timestamps, hypermedia urls)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from api.schemas import ArtifactOut, EventOut, FileOut, JobError, JobOut, Progress, WebhookOut
from dwf_service.models import Artifact, File, JobEvent


def rfc3339(value: datetime | None) -> str | None:
    """UTC timestamp like 2026-11-25T21:05:00.123Z."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _HasId(Protocol):
    id: str


def newest_first_page(page: Sequence[_HasId], has_more: bool) -> dict[str, Any]:
    """The fields of a newest-first list page (JobList, SweepList): its items, whether more follow, and the ids to
    page from."""
    return {
        "data": list(page),
        "has_more": has_more,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }


def file_out(file: File) -> FileOut:
    """The public view of a file."""
    return FileOut(
        id=file.id,
        bytes=file.bytes,
        sha256=file.sha256,
        filename=file.filename,
        purpose=file.purpose,
        format=file.format,
        created_at=rfc3339(file.created_at) or "",
    )


class JobFields(Protocol):
    """What job_out reads: a Job row object, or a Core row of the jobs table (same names)."""

    id: str
    status: str
    phase: str | None
    request: dict[str, Any]
    epoch: int | None
    epochs: int | None
    progress: float | None
    eta_seconds: float | None
    metrics: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    error_param: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    sweep_id: str | None
    webhook_url: str | None
    parent_job_id: str | None


def job_out(job: JobFields) -> JobOut:
    """The public view of a job."""
    req = job.request
    base = f"/v1/jobs/{job.id}"
    error = None
    if job.error_code is not None:
        error = JobError(code=job.error_code, message=job.error_message, param=job.error_param)
    return JobOut(
        id=job.id,
        status=job.status,
        phase=job.phase,
        model=req["model"],
        weights_file_id=req.get("weights_file_id"),
        dataset=req["dataset"],
        method=req["method"],
        seed=req.get("seed", 0),
        metadata=req.get("metadata"),
        progress=Progress(epoch=job.epoch, epochs=job.epochs, fraction=job.progress, eta_seconds=job.eta_seconds),
        metrics=job.metrics,
        error=error,
        attempts=job.attempts,
        created_at=rfc3339(job.created_at) or "",
        started_at=rfc3339(job.started_at),
        finished_at=rfc3339(job.finished_at),
        sweep_id=job.sweep_id,
        parent_job_id=job.parent_job_id,
        webhook=WebhookOut(url=job.webhook_url) if job.webhook_url else None,
        urls={
            "self": base,
            "cancel": f"{base}/cancel",
            "events": f"{base}/events",
            "artifacts": f"{base}/artifacts",
        },
    )


def event_out(event: JobEvent) -> EventOut:
    """The public view of an event (ids are ``evt-<n>``, usable as the ``after`` cursor)."""
    return EventOut(
        id=f"evt-{event.id}",
        created_at=rfc3339(event.created_at) or "",
        level=event.level,
        type=event.type,
        message=event.message,
        data=event.data,
    )


def artifact_out(artifact: Artifact) -> ArtifactOut:
    """The public view of an artifact."""
    return ArtifactOut(
        name=artifact.name,
        bytes=artifact.bytes,
        sha256=artifact.sha256,
        url=f"/v1/jobs/{artifact.job_id}/artifacts/{artifact.name}",
    )
