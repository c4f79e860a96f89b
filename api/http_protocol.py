"""uvicorn's h11 protocol with TCP_NODELAY on every connection, for ``uvicorn --workers N``.

With ``--workers`` uvicorn binds the listening socket itself as ``socket.socket(AF_INET)`` (proto 0), and asyncio sets
TCP_NODELAY only on sockets whose proto is IPPROTO_TCP. Without it Nagle's algorithm meets the client's delayed ACK
and every request after the first on a keep-alive connection stalls ~40 ms (T15: job status and /healthz both held to
~21 requests/s per connection with 2 workers; docs/reliability.md). Select it with
``uvicorn --http api.http_protocol:NoDelayH11Protocol`` (docker/entrypoint-api.sh, benchmarks/load_test.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol

TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on the transport's TCP socket (no-op for Unix sockets)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in TCP_FAMILIES:
        with contextlib.suppress(OSError):  # the peer may already be gone
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayH11Protocol(H11Protocol):
    """H11Protocol that sets TCP_NODELAY when a connection is made."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)
