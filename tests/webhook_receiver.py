"""A real local HTTP endpoint for webhook tests: records every POST and answers the status codes it is told to."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    """One POST the receiver got: the path, the headers (lower-case names) and the raw body."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        """The JSON body."""
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    """``url`` takes POSTs; ``answer(call) -> status`` decides each answer (default 200); ``calls`` records them."""

    def __init__(self, answer: Callable[[Call], int] | None = None) -> None:
        self.calls: list[Call] = []
        self.answers: list[int] = []
        self.answer = answer or (lambda _call: 200)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                call = Call(self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                with receiver._lock:
                    receiver.calls.append(call)
                    status = receiver.answer(call)
                    receiver.answers.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, predicate: Callable[[list[Call]], bool], timeout: float) -> list[Call]:
        """Block until ``predicate(calls)`` holds; AssertionError with what arrived after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                calls = list(self.calls)
            if predicate(calls):
                return calls
            time.sleep(0.05)
        raise AssertionError(f"webhook calls not as expected after {timeout} s: {[c.event['type'] for c in calls]}")


@contextmanager
def running_receiver(answer: Callable[[Call], int] | None = None) -> Iterator[Receiver]:
    """A Receiver serving in a daemon thread until the block ends."""
    receiver = Receiver(answer)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(timeout=5)
