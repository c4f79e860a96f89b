"""T12 upload limits (reliability-tests.md §6): bodies stream to disk in constant memory and the cap answers 413.

The app is driven at the ASGI level with a ``receive`` that hands out the body in 64 KiB chunks, as a server
would, so nothing in the test buffers the body (Starlette's TestClient reads a streamed request whole before
calling the app). Python allocations are traced with tracemalloc; the bytes of the process's open temporary
files (Starlette's spooled upload files, unnamed on Linux) are sampled from /proc/self/fd while the request runs.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI

from api.app import MULTIPART_OVERHEAD, create_app
from dwf_service.auth import add_key
from dwf_service.db import session_scope
from tests.service_helpers import make_context, make_settings

API_KEY = "dwf_limits-key-0123456789abcdefghijklmnop"
BOUNDARY = "dwfboundary7MA4YWxkTrZu0gW"
CHUNK = b"1,2,3,4,5,6,7\n" * 4681  # ~64 KiB of CSV rows, reused so the generator itself allocates nothing
MIB = 2**20


def _app(tmp_path: Path, max_upload_bytes: int) -> tuple[FastAPI, Path]:
    ctx = make_context(make_settings(tmp_path / "data", max_upload_bytes=max_upload_bytes), [])
    with session_scope(ctx.sessions) as session:
        add_key(session, API_KEY)
    return create_app(ctx.settings, context=ctx, reconciler=False), tmp_path / "data"


def _file_part(name: str, filename: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def _field(name: str, value: bytes) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"


def multipart_csv(total: int, purpose: str = "dataset") -> Iterator[bytes]:
    """A multipart upload of a CSV dataset of about ``total`` bytes, generated chunk by chunk."""
    yield _field("purpose", purpose.encode()) + _file_part("file", "big.csv") + b"label,a,b,c,d,e,f\n"
    sent = 0
    while sent < total:
        yield CHUNK
        sent += len(CHUNK)
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


@dataclass
class Measured:
    """What one request did: status, JSON body, peak traced Python memory, peak temp-file and RSS growth."""

    status: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    traced_peak: int = 0
    temp_peak: int = 0
    rss_growth: int = 0


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _temp_bytes(tmp_dir: str) -> int:
    """Bytes held by this process's open files under ``tmp_dir`` (unlinked spooled files included)."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(tmp_dir):
                total += os.stat(f"/proc/self/fd/{fd}").st_size
        except OSError:
            continue
    return total


def post(app: FastAPI, chunks: Iterator[bytes], headers: dict[str, str], tmp_dir: str) -> Measured:
    """POST /v1/files through the ASGI interface, measuring memory and temp files while it runs."""
    out = Measured()
    response: list[bytes] = []
    done = threading.Event()
    base_rss = _rss()

    def sample() -> None:
        while not done.is_set():
            out.temp_peak = max(out.temp_peak, _temp_bytes(tmp_dir))
            out.rss_growth = max(out.rss_growth, _rss() - base_rss)
            time.sleep(0.005)

    async def receive() -> dict[str, Any]:
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
        elif message["type"] == "http.response.body":
            response.append(message.get("body", b""))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/files",
        "raw_path": b"/v1/files",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    try:
        anyio.run(app, scope, receive, send)  # type: ignore[arg-type]
        out.traced_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        done.set()
        sampler.join()
    out.body = json.loads(b"".join(response) or b"{}")
    return out


def _headers(length: int | None = None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    if length is not None:
        headers["content-length"] = str(length)
    return headers


@pytest.fixture
def tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Spooled upload files land here, so their bytes can be told apart from everything else."""
    path = tmp_path / "spool"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return str(path)


@pytest.mark.slow
def test_200_mb_streamed_upload_is_stored_in_constant_memory(tmp_path: Path, tmp_dir: str) -> None:
    app, data_dir = _app(tmp_path, max_upload_bytes=256 * MIB)
    m = post(app, multipart_csv(200 * MIB), _headers(), tmp_dir)
    assert m.status == 200, m.body
    assert m.body["format"] == "csv" and m.body["bytes"] > 200 * MIB
    stored = [p for p in data_dir.rglob("file-*") if p.is_file()]
    assert [p.stat().st_size for p in stored] == [m.body["bytes"]]
    # The body is never held in memory: Python allocations peak far below the body size, and so does RSS.
    assert m.traced_peak < 16 * MIB, f"traced peak {m.traced_peak / MIB:.1f} MiB"
    assert m.rss_growth < 50 * MIB, f"RSS grew {m.rss_growth / MIB:.1f} MiB"
    # Starlette spools the file part to one temporary file: at most the body, never more.
    assert m.temp_peak <= 256 * MIB + MULTIPART_OVERHEAD


def _counted(chunks: Iterable[bytes], sent: list[int]) -> Iterator[bytes]:
    """``chunks``, recording the size of each one the server pulled into ``sent``."""
    for chunk in chunks:
        sent.append(len(chunk))
        yield chunk


def test_declared_content_length_over_the_cap_is_413_before_reading(tmp_path: Path, tmp_dir: str) -> None:
    cap = 4 * MIB
    app, data_dir = _app(tmp_path, max_upload_bytes=cap)
    sent: list[int] = []
    m = post(app, _counted(multipart_csv(2 * cap), sent), _headers(length=2 * cap + 1000), tmp_dir)
    assert m.status == 413 and m.body["error"]["code"] == "too_large"
    assert sum(sent) == 0  # refused from the header alone
    assert not list(data_dir.rglob("file-*"))


def test_chunked_body_over_the_cap_is_413_and_stops_early(tmp_path: Path, tmp_dir: str) -> None:
    cap = 4 * MIB
    app, data_dir = _app(tmp_path, max_upload_bytes=cap)
    sent: list[int] = []
    m = post(app, _counted(multipart_csv(2 * cap), sent), _headers(), tmp_dir)
    assert m.status == 413 and m.body["error"]["code"] == "too_large"
    assert sum(sent) <= cap + MULTIPART_OVERHEAD + len(CHUNK) + 1024  # reading stopped at the cap
    assert m.temp_peak <= cap + MULTIPART_OVERHEAD
    assert m.traced_peak < 16 * MIB
    assert not list(data_dir.rglob("file-*"))


def test_1001_tiny_files_are_refused(tmp_path: Path, tmp_dir: str) -> None:
    app, data_dir = _app(tmp_path, max_upload_bytes=4 * MIB)

    def parts() -> Iterator[bytes]:
        yield _field("purpose", b"dataset")
        for i in range(1001):
            yield _file_part("file", f"f{i}.csv") + b"a,b\n1,2\n\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    m = post(app, parts(), _headers(), tmp_dir)
    assert m.status in (400, 413), m.body
    assert m.body["error"]["type"] == "invalid_request_error"
    assert not list(data_dir.rglob("file-*"))


@pytest.mark.parametrize("cap", [4 * MIB, 256 * MIB], ids=["cap-4MiB", "cap-256MiB"])
def test_100_mb_form_field_is_refused(tmp_path: Path, tmp_dir: str, cap: int) -> None:
    """A non-file field may hold 1 MiB (Starlette's max_part_size): 400 long before 100 MB are read."""
    app, data_dir = _app(tmp_path, max_upload_bytes=cap)
    sent: list[int] = []

    def parts() -> Iterator[bytes]:
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'.encode()
        for _ in range(100 * MIB // len(CHUNK)):
            sent.append(len(CHUNK))
            yield CHUNK
        yield b"\r\n" + _file_part("file", "d.csv") + b"a,b\n1,2\n" + f"\r\n--{BOUNDARY}--\r\n".encode()

    m = post(app, parts(), _headers(), tmp_dir)
    assert m.status in (400, 413), m.body
    assert m.body["error"]["type"] == "invalid_request_error"
    assert sum(sent) < 2 * MIB + len(CHUNK)  # the rest of the body was never read
    assert m.traced_peak < 16 * MIB, f"traced peak {m.traced_peak / MIB:.1f} MiB"
    assert not list(data_dir.rglob("file-*"))


def _one_file(filename: str, payload: bytes, purpose: str = "dataset") -> bytes:
    end = f"\r\n--{BOUNDARY}--\r\n".encode()
    return _field("purpose", purpose.encode()) + _file_part("file", filename) + payload + end


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), len(CHUNK)):
        yield body[start : start + len(CHUNK)]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("filename", "head"),
    [("blob.bin", b"\x00\x01no known format\xff"), ("model.pt", b"PK\x03\x04"), ("d.csv", b"label,a\n")],
    ids=["unknown-format", "refused-format", "known-format"],
)
def test_a_file_over_the_cap_is_413_whatever_its_content(
    tmp_path: Path, tmp_dir: str, declared: bool, filename: str, head: bytes
) -> None:
    """Over DWF_MAX_UPLOAD_BYTES (but within the multipart margin the body cap allows) the size decides: 413."""
    cap = MIB
    app, data_dir = _app(tmp_path, max_upload_bytes=cap)
    payload = head + b"1" * (cap + 1000 - len(head))
    body = _one_file(filename, payload)
    assert len(body) < cap + MULTIPART_OVERHEAD  # the body cap lets it through: the route must answer
    m = post(app, _chunks(body), _headers(length=len(body) if declared else None), tmp_dir)
    assert m.status == 413, m.body
    assert m.body["error"]["code"] == "too_large" and m.body["error"]["param"] == "file"
    assert str(cap) in m.body["error"]["message"]
    assert not list(data_dir.rglob("file-*"))


def test_a_file_at_the_cap_is_judged_by_its_content(tmp_path: Path, tmp_dir: str) -> None:
    app, _ = _app(tmp_path, max_upload_bytes=MIB)
    body = _one_file("blob.bin", b"\x00\x01no known format\xff" + b"1" * (MIB - 18))
    m = post(app, _chunks(body), _headers(length=len(body)), tmp_dir)
    assert m.status == 415, m.body
