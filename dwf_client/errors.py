"""Exceptions of the SDK: one typed API error carrying the server's envelope, and a connection error."""

from __future__ import annotations

import json

import httpx


class DwfError(Exception):
    """Base class of every error the SDK raises on purpose."""


class DwfConnectionError(DwfError):
    """The server could not be reached (after the retries)."""


class DwfApiError(DwfError):
    """A non-2xx answer: HTTP ``status``, and ``code``/``message``/``param`` of the ``{"error": {…}}`` envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.type = type
        self.headers = headers or {}

    def __str__(self) -> str:
        where = f" [{self.param}]" if self.param else ""
        return f"{self.status} {self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"DwfApiError(status={self.status}, code={self.code!r}, message={self.message!r}, param={self.param!r})"

    @classmethod
    def from_response(cls, response: httpx.Response) -> DwfApiError:
        """Read the envelope; a body that is not one (a proxy's HTML page) still gives a usable error."""
        headers = dict(response.headers)
        try:
            body = json.loads(response.read() or b"null")
        except (ValueError, httpx.HTTPError):
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return cls(
                response.status_code,
                str(error.get("code") or f"http_{response.status_code}"),
                str(error.get("message") or response.reason_phrase),
                param=error.get("param") if isinstance(error.get("param"), str) else None,
                type=error.get("type") if isinstance(error.get("type"), str) else None,
                headers=headers,
            )
        if isinstance(body, dict) and "detail" in body:  # FastAPI's default shape, e.g. from an older server
            message = str(body["detail"])
        else:
            try:
                text = response.text.strip()
            except (httpx.HTTPError, UnicodeDecodeError):
                text = ""
            message = " ".join(text.split())[:200] or response.reason_phrase or "error"
        return cls(response.status_code, f"http_{response.status_code}", message, headers=headers)
