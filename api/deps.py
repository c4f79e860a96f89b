"""Dependencies as Annotated aliases: the session (committed here, not in routes), auth, tenant-scoped fetch-or-404.

Each sync dependency is its own trip through the thread pool, which under load costs more than the database work it
does: the context is read on the event loop and the key is checked in one trip with its own short read-only session.
The hottest route, job status (every client polls it), checks the key, reads and renders in a single trip
(routes/jobs.py ``status_router``, mounted outside the router-level key check).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.errors import ApiError
from dwf_service.auth import find_key
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import File, Job, Tenant


async def get_context(request: Request) -> ServiceContext:
    """The app's service context."""
    ctx: ServiceContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[ServiceContext, Depends(get_context)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    """One transaction per request: committed after the route returns (queued messages go out then)."""
    with session_scope(ctx.sessions) as session:
        yield session


# scope="function": commit before the response is sent, so a client never sees an id it cannot read back.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@dataclass(frozen=True)
class Caller:
    """Who sent the request: the id of the API key it carried and of that key's tenant."""

    key_id: str
    tenant_id: str


def bearer_key(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header, or 401."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "missing_api_key", "send your API key as 'Authorization: Bearer <key>'")
    return key.strip()


def find_caller(session: Session, key: str) -> Caller:
    """The caller whose active key is ``key``, or 401."""
    row = find_key(session, key)
    if row is None:
        raise ApiError(401, "invalid_api_key", "the API key is not valid")
    return Caller(key_id=row.id, tenant_id=row.tenant_id)


def check_key(ctx: ServiceContext, key: str) -> Caller:
    """The caller whose active key is ``key`` (own short read-only session), or 401."""
    with ctx.sessions() as session:  # read only: closing it rolls back, no commit round trip
        return find_caller(session, key)


async def authenticate(ctx: ContextDep, authorization: Annotated[str | None, Header()] = None) -> Caller:
    """The caller named by ``Authorization: Bearer <key>``, or 401 (checked before the route's other dependencies)."""
    key = bearer_key(authorization)
    return await run_in_threadpool(check_key, ctx, key)


CurrentKey = Annotated[Caller, Depends(authenticate)]


def get_tenant(key: CurrentKey, session: SessionDep) -> Tenant:
    """The tenant the request's API key belongs to."""
    tenant = session.get(Tenant, key.tenant_id)
    if tenant is None:  # unreachable while the foreign key holds
        raise ApiError(401, "invalid_api_key", "the API key is not valid")
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_tenant)]


def get_job(job_id: str, session: SessionDep, key: CurrentKey) -> Job:
    """The caller's job named in the path, or 404 (also for another tenant's job: its existence is not revealed)."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != key.tenant_id:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}", param="job_id")
    return job


def owned_file(session: Session, tenant_id: str, file_id: str) -> File | None:
    """The file ``file_id`` if ``tenant_id`` owns it."""
    file = session.get(File, file_id)
    return file if file is not None and file.tenant_id == tenant_id else None


def get_file(file_id: str, session: SessionDep, key: CurrentKey) -> File:
    """The caller's file named in the path, or 404 (also for another tenant's file)."""
    file = owned_file(session, key.tenant_id, file_id)
    if file is None:
        raise ApiError(404, "file_not_found", f"no file {file_id!r}", param="file_id")
    return file


CurrentJob = Annotated[Job, Depends(get_job)]
CurrentFile = Annotated[File, Depends(get_file)]
