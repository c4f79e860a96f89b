"""TCP_NODELAY under ``uvicorn --workers``: a listening socket bound the way uvicorn binds it (proto 0) gets no
TCP_NODELAY from asyncio on its connections; ``api.http_protocol.NoDelayH11Protocol`` sets it."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.http_protocol import NoDelayH11Protocol


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _nodelay_of_server_connections(protocol: type[asyncio.Protocol]) -> list[int]:
    """Serve one keep-alive request through ``protocol`` on a proto-0 socket; TCP_NODELAY of the server's sockets."""
    sock = socket.socket(socket.AF_INET)  # as uvicorn's Config.bind_socket does for --workers
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    assert sock.proto == 0
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_ok, http=protocol, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(100):
                if server.started:
                    break
                threading.Event().wait(0.05)
            assert client.get("/").text == "ok"
            connections = list(server.server_state.connections)
            assert connections, "the keep-alive connection is still open"
            return [
                c.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                for c in connections
            ]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.mark.parametrize(("protocol", "expected"), [(H11Protocol, 0), (NoDelayH11Protocol, 1)])
def test_nodelay_on_connections_of_a_proto_0_listener(protocol: type[asyncio.Protocol], expected: int) -> None:
    # The plain protocol shows the problem is real on this Python (else the fix would be untested).
    assert all(v == expected for v in _nodelay_of_server_connections(protocol))
