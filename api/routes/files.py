"""/v1/files: upload (streamed, capped, hashed), list, get, delete."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, UploadFile
from sqlalchemy import or_, select

from api.deps import ContextDep, CurrentFile, CurrentTenant, SessionDep
from api.errors import ApiError, ErrorResponse
from api.render import file_out
from api.schemas import Deleted, FileList, FileOut
from dwf_service import jobs, quotas
from dwf_service.models import File, Job, new_id
from dwf_service.sniff import UploadRefused, inspect_upload
from dwf_service.storage import TooLarge

router = APIRouter(prefix="/files", tags=["files"])
Purpose = Literal["model", "weights", "dataset"]


def _spooled_size(file: UploadFile) -> int:
    """Bytes of the upload (the multipart parser counts them as it spools the file)."""
    if file.size is not None:
        return file.size
    position = file.file.tell()
    size = file.file.seek(0, os.SEEK_END)
    file.file.seek(position)
    return size


# 400: the multipart parser's own limits (1000 files, 1 MiB per non-file field); 415: refused formats.
@router.post("", response_model=FileOut, responses={code: {"model": ErrorResponse} for code in (400, 415, 429)})
def upload_file(
    ctx: ContextDep,
    session: SessionDep,
    tenant: CurrentTenant,
    file: UploadFile,
    purpose: Annotated[Purpose, Form()],
) -> FileOut:
    """Upload a model (ONNX or transformers config.json), weights (safetensors) or dataset; streamed to the blob
    store with a size cap."""
    filename = (file.filename or "upload").replace("/", "_").replace("\\", "_")[:255]
    # The size first, so a file over the cap is 413 whatever it holds. The body cap (api/limits.py) allows the
    # multipart framing on top, so a file up to that much over the cap reaches this route, already spooled whole.
    limit = ctx.settings.max_upload_bytes
    if _spooled_size(file) > limit:
        raise ApiError(413, "too_large", f"{filename} is larger than the limit of {limit} bytes", param="file")
    try:  # format, code formats (415), archive and safetensors-header checks, all before storing anything
        fmt = inspect_upload(file.file, filename, purpose)
    except UploadRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message, param=exc.param) from None
    quotas.check_storage(session, ctx.settings, tenant, file.size or 0, lock=False)  # 429 before storing anything
    file_id = new_id("file")
    key = f"files/{file_id}"
    try:
        size, sha256 = ctx.storage.put_stream(key, file.file, max_bytes=ctx.settings.max_upload_bytes)
    except TooLarge as exc:
        raise ApiError(413, "too_large", f"{filename} is {exc}", param="file") from None
    try:  # again with the stored size, under the tenant's lock
        quotas.check_storage(session, ctx.settings, tenant, size)
    except quotas.QuotaExceeded:
        ctx.storage.delete(key)
        raise
    examples = quotas.count_examples(file.file, fmt) if purpose == "dataset" else None
    row = File(id=file_id, bytes=size, sha256=sha256, filename=filename, purpose=purpose, format=fmt, storage_key=key)
    row.tenant_id, row.examples = tenant.id, examples
    session.add(row)
    session.flush()
    return file_out(row)


@router.get("", response_model=FileList)
def list_files(
    session: SessionDep,
    tenant: CurrentTenant,
    purpose: Purpose | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> FileList:
    """The caller's files, newest first; ``after`` is the last id of the previous page."""
    query = select(File).where(File.tenant_id == tenant.id).order_by(File.id.desc()).limit(limit + 1)
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    if after is not None:
        query = query.where(File.id < after)
    rows = list(session.scalars(query))
    return FileList(data=[file_out(f) for f in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{file_id}", response_model=FileOut)
def get_file(file: CurrentFile) -> FileOut:
    """One file."""
    return file_out(file)


@router.delete("/{file_id}", response_model=Deleted)
def delete_file(ctx: ContextDep, session: SessionDep, file: CurrentFile) -> Deleted:
    """Delete a file; 409 while an active job uses it."""
    users = session.scalars(
        select(Job.id).where(
            Job.status.in_(jobs.ACTIVE),
            or_(Job.model_file_id == file.id, Job.weights_file_id == file.id, Job.dataset_file_id == file.id),
        )
    ).all()
    if users:
        raise ApiError(409, "file_in_use", f"{file.id} is used by active job(s) {', '.join(users)}", param="file_id")
    session.delete(file)
    session.flush()
    ctx.storage.delete(file.storage_key)
    return Deleted(id=file.id, object="file", deleted=True)
