"""One error envelope for every error: ``{"error": {type, code, message, param}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from dwf_service.quotas import QuotaExceeded

log = logging.getLogger(__name__)

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}
_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    429: "too_many_requests",
}


class ErrorBody(BaseModel):
    """The error object."""

    type: str
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    """What every non-2xx response holds (declared on routes for the OpenAPI docs)."""

    error: ErrorBody


class ApiError(Exception):
    """An error the API answers with on purpose."""

    def __init__(
        self, status: int, code: str, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = dict(headers or {})


def error_response(status: int, code: str, message: str, param: str | None = None, **headers: str) -> JSONResponse:
    """The envelope as a response."""
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    body = {"error": {"type": kind, "code": code, "message": message, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or None


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the envelope."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        headers.update(exc.headers)
        return error_response(exc.status, exc.code, exc.message, exc.param, **headers)

    @app.exception_handler(QuotaExceeded)
    async def _quota_exceeded(_request: Request, exc: QuotaExceeded) -> JSONResponse:
        return error_response(429, exc.code, exc.message, exc.param, **{"Retry-After": str(exc.retry_after)})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, code, str(exc.detail), None, **(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": "value_error"}
        param = _param(tuple(first.get("loc", ())))
        kind = str(first.get("type", "value_error"))
        code = {"extra_forbidden": "unknown_field", "missing": "missing_field"}.get(kind, "invalid_value")
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return error_response(422, code, f"{param}: {msg}" if param else msg, param)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal server error")
