"""/v1/files: upload (streamed, capped, hashed), list, get, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, UploadFile
from sqlalchemy import or_, select

from api.deps import ContextDep, CurrentFile, SessionDep
from api.errors import ApiError
from api.render import file_out
from api.schemas import Deleted, FileList, FileOut
from dwf_service import jobs
from dwf_service.models import File, Job, new_id
from dwf_service.sniff import ACCEPTED, HINTS, UNSAFE, sniff
from dwf_service.storage import TooLarge

router = APIRouter(prefix="/files", tags=["files"])
Purpose = Literal["model", "weights", "dataset"]


@router.post("", response_model=FileOut)
def upload_file(
    ctx: ContextDep,
    session: SessionDep,
    file: UploadFile,
    purpose: Annotated[Purpose, Form()],
) -> FileOut:
    """Upload a model (ONNX), weights (safetensors) or dataset; streamed to the blob store with a size cap."""
    size_hint = file.size if file.size is not None else ctx.settings.max_upload_bytes
    filename = (file.filename or "upload").replace("/", "_").replace("\\", "_")[:255]
    fmt = sniff(file.file, filename, size_hint)
    if fmt in UNSAFE:
        raise ApiError(
            422, "unsafe_format", f"{filename}: {fmt} files can run code when loaded and are refused", param="file"
        )
    if fmt not in ACCEPTED[purpose]:
        raise ApiError(422, "unsupported_format", f"{filename}: detected {fmt}; {HINTS[purpose]}", param="file")
    file_id = new_id("file")
    key = f"files/{file_id}"
    try:
        size, sha256 = ctx.storage.put_stream(key, file.file, max_bytes=ctx.settings.max_upload_bytes)
    except TooLarge as exc:
        raise ApiError(413, "too_large", f"{filename} is {exc}", param="file") from None
    row = File(id=file_id, bytes=size, sha256=sha256, filename=filename, purpose=purpose, format=fmt, storage_key=key)
    session.add(row)
    session.flush()
    return file_out(row)


@router.get("", response_model=FileList)
def list_files(
    session: SessionDep,
    purpose: Purpose | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> FileList:
    """Files, newest first; ``after`` is the last id of the previous page."""
    query = select(File).order_by(File.id.desc()).limit(limit + 1)
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
