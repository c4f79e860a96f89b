"""Answering a download of a stored artifact (a job's or a sweep's), once the route has authorized it.

ETag (the sha256) and If-None-Match → 304; on S3 storage with DWF_S3_PRESIGN_DOWNLOADS a 307 to a short-lived
presigned URL (DWF_S3_PRESIGN_EXPIRY_SECONDS) that the client follows without its API key; else the bytes stream
through the API.
"""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import RedirectResponse, StreamingResponse

from dwf_service.context import ServiceContext
from dwf_service.storage import S3Storage


def blob_download(
    ctx: ServiceContext, *, storage_key: str, name: str, size: int, sha256: str, if_none_match: str | None
) -> Response:
    """The answer to GET of one artifact whose key and tenant the caller has already checked."""
    etag = f'"{sha256}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    if ctx.settings.s3_presign_downloads and isinstance(ctx.storage, S3Storage):
        # S3 serves the bytes; the URL works for this object only, for a few minutes.
        url = ctx.storage.presigned_url(storage_key, ctx.settings.s3_presign_expiry_seconds, name)
        return RedirectResponse(url, status_code=307, headers={"ETag": etag, "Cache-Control": "no-store"})
    headers = {"Content-Length": str(size), "ETag": etag, "Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(ctx.storage.open(storage_key), media_type="application/octet-stream", headers=headers)
