"""A pure-ASGI request-body cap: counts bytes as they arrive (chunked bodies included) and answers 413.

Starlette spools multipart files to disk with no total cap, and FastAPI parses the form before any
dependency runs, so the cap has to sit in front of the app (reliability-tests.md §4 and §7).
The cap allows the multipart framing on top of DWF_MAX_UPLOAD_BYTES, so the files route checks the file's own
size against the limit before it looks at the content: a file over it is 413 whatever it holds.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised into the app's receive() once the body passes the cap."""


class BodyLimitMiddleware:
    """Answer 413 for request bodies larger than ``max_bytes`` (the app's own response is swallowed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        received = 0
        tripped = False
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    tripped = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal rejected
            if not tripped:
                await send(message)
            elif message["type"] == "http.response.start" and not rejected:
                rejected = True
                await self._reject(send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not rejected:
                rejected = True
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": {
                    "type": "invalid_request_error",
                    "code": "too_large",
                    "message": f"the request body exceeds the limit of {self.max_bytes} bytes",
                    "param": "file",
                }
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
