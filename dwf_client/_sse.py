"""A minimal server-sent events parser (the subset ``GET /v1/jobs/{id}/events?stream=true`` uses)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SseMessage:
    """One dispatched message: its ``event`` name (default "message"), ``data`` and ``id`` (None if not sent)."""

    event: str
    data: str
    id: str | None


def parse_sse(lines: Iterable[str]) -> Iterator[SseMessage]:
    """Messages from the stream's lines (without line endings), per the WHATWG event-stream rules."""
    event, last_id = "", None
    data: list[str] = []
    seen_field = False
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if seen_field and (data or event):
                yield SseMessage(event or "message", "\n".join(data), last_id)
            event, data, seen_field = "", [], False
            continue
        if line.startswith(":"):  # a comment: the server's keep-alive
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        seen_field = True
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
    if seen_field and (data or event):
        yield SseMessage(event or "message", "\n".join(data), last_id)
