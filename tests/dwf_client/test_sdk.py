"""SDK unit tests on httpx.MockTransport: error mapping, retries with one Idempotency-Key, streamed upload progress,
SSE parsing, ``wait`` over SSE and its polling fallback, config resolution."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dwf_client import Client, DwfApiError, DwfConnectionError, JobProgress
from dwf_client._sse import parse_sse
from dwf_client.config import ConfigError, resolve

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, **kwargs: Any) -> Client:
    return Client("http://dwf.test", "key-1", transport=httpx.MockTransport(handler), sleep=lambda _s: None, **kwargs)


def _job(status: str = "queued", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "job-1",
        "object": "job",
        "status": status,
        "phase": None,
        "model": {"name": "lenet_300_100"},
        "weights_file_id": None,
        "dataset": {"file_id": "file-d"},
        "method": {"type": "dwf", "depth": 3},
        "seed": 0,
        "metadata": None,
        "progress": {"epoch": None, "epochs": 2, "fraction": None, "eta_seconds": None},
        "metrics": None,
        "error": None,
        "attempts": 0,
        "created_at": "2026-11-26T01:00:00.000Z",
        "started_at": None,
        "finished_at": None,
        "urls": {"self": "/v1/jobs/job-1"},
        "a_field_added_later": 1,
    }
    body.update(extra)
    return body


def _event(n: int, message: str, type: str = "message", data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": f"evt-{n}",
        "object": "job.event",
        "created_at": "2026-11-26T01:00:00.000Z",
        "level": "info",
        "type": type,
        "message": message,
        "data": data,
    }


def _envelope(status: int, code: str, message: str, param: str | None = None, **headers: str) -> httpx.Response:
    body = {"error": {"type": "invalid_request_error", "code": code, "message": message, "param": param}}
    return httpx.Response(status, json=body, headers=headers)


def test_errors_map_to_dwf_api_error_with_the_envelope_fields() -> None:
    client = _client(lambda _r: _envelope(404, "job_not_found", "no job 'job-x'", "job_id"))
    with pytest.raises(DwfApiError) as info:
        client.get_job("job-x")
    err = info.value
    assert (err.status, err.code, err.message, err.param) == (404, "job_not_found", "no job 'job-x'", "job_id")
    assert str(err) == "404 job_not_found: no job 'job-x' [job_id]"


def test_a_body_that_is_not_the_envelope_still_gives_a_typed_error() -> None:
    client = _client(lambda _r: httpx.Response(418, text="<html><body>I'm a\n teapot</body></html>"))
    with pytest.raises(DwfApiError) as info:
        client.list_jobs()
    assert (info.value.status, info.value.code) == (418, "http_418")
    assert "teapot" in info.value.message and "\n" not in info.value.message


def test_create_job_retries_with_the_same_idempotency_key() -> None:
    keys: list[str | None] = []
    failures = ["timeout", "503"]

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("idempotency-key"))
        failure = failures.pop(0) if failures else None
        if failure == "timeout":
            raise httpx.ReadTimeout("the server was slow", request=request)
        if failure == "503":
            return _envelope(503, "unavailable", "try again", **{"Retry-After": "1"})
        return httpx.Response(200, json={**_job(), "method": json.loads(request.content)["method"]})

    client = _client(handler)
    job = client.submit("lenet_300_100", "file-d", depth=3, target_sparsity=0.9)
    assert job.id == "job-1" and job.status == "queued"
    assert job.method == {"type": "dwf", "depth": 3, "target_sparsity": 0.9}  # unset options left to the server
    assert len(keys) == 3 and keys[0] is not None and keys[0].startswith("dwf-client-")
    assert keys[0] == keys[1] == keys[2]
    # Another submit is another request: another key (or the caller's own).
    keys.clear()
    client.submit("lenet_300_100", "file-d")
    client.submit("lenet_300_100", "file-d", idempotency_key="mine")
    assert keys[0] not in (None, job.id, "mine") and keys[1] == "mine"
    # Method options beyond the named ones travel as given (here: dense training first).
    pretrained = client.submit("lenet_300_100", "file-d", target_sparsity=0.99, dense_epochs=30)
    assert pretrained.method == {"type": "dwf", "target_sparsity": 0.99, "dense_epochs": 30}


def test_a_key_in_use_409_is_retried_with_the_same_key_and_gets_the_replay() -> None:
    """409 idempotency_key_in_use (the key's first request still in flight): sent again after Retry-After, same key;
    409 idempotency_key_reused (another body) is the caller's mistake and raised at once."""
    keys: list[str | None] = []
    busy = _envelope(409, "idempotency_key_in_use", "retry after a moment", "Idempotency-Key", **{"Retry-After": "1"})
    answers = [busy]

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("idempotency-key"))
        return answers.pop(0) if answers else httpx.Response(200, json=_job())

    slept: list[float] = []
    client = Client("http://dwf.test", "key-1", transport=httpx.MockTransport(handler), sleep=slept.append)
    assert client.submit("lenet_300_100", "file-d", idempotency_key="run-1").id == "job-1"
    assert keys == ["run-1", "run-1"] and slept == [1.0]

    keys.clear()
    answers.append(_envelope(409, "idempotency_key_reused", "another body", "Idempotency-Key"))
    with pytest.raises(DwfApiError) as info:
        client.submit("lenet_300_100", "file-d", idempotency_key="run-1")
    assert info.value.code == "idempotency_key_reused" and keys == ["run-1"]

    keys.clear()
    answers.extend([busy] * 3)
    with pytest.raises(DwfApiError) as info:  # still in flight after max_retries: the 409 is the caller's to handle
        client.submit("lenet_300_100", "file-d", idempotency_key="run-2")
    assert info.value.code == "idempotency_key_in_use" and keys == ["run-2"] * 3


def test_submit_sends_timm_and_torchvision_names_as_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content)["model"])
        return httpx.Response(200, json=_job())

    monkeypatch.chdir(tmp_path)  # no local file shadows a name
    client = _client(handler)
    for name in ("timm:resnet18", "timm:vit_tiny_patch16_224", "torchvision:resnet18"):
        client.submit(name, "file-d")
    assert [m["name"] for m in sent] == ["timm:resnet18", "timm:vit_tiny_patch16_224", "torchvision:resnet18"]


def test_retries_stop_after_max_retries_and_long_retry_after_is_not_slept() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return _envelope(429, "quota_exceeded", "too many running jobs", **{"Retry-After": "3600"})

    with pytest.raises(DwfApiError) as info:
        _client(handler).create_job({"model": {"name": "x"}, "dataset": {"file_id": "file-d"}, "method": {}})
    assert info.value.status == 429 and info.value.headers["retry-after"] == "3600"
    assert len(calls) == 1

    calls.clear()

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return _envelope(502, "bad_gateway", "upstream")

    with pytest.raises(DwfApiError):
        _client(flaky, max_retries=2).get_job("job-1")
    assert len(calls) == 3


def test_upload_is_streamed_with_progress_and_not_retried_after_an_ambiguous_failure(tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    data.write_bytes(b"PK" + bytes(300_000))
    seen: list[tuple[int, int]] = []
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        bodies.append(b"".join(request.stream))
        file = {"id": "file-1", "bytes": 300_002, "sha256": "0" * 64, "filename": "d.npz", "purpose": "dataset"}
        return httpx.Response(200, json={**file, "format": "npz", "created_at": "2026-11-26T01:00:00.000Z"})

    uploaded = _client(handler).upload_file(data, "dataset", on_progress=lambda s, t: seen.append((s, t)))
    assert uploaded.id == "file-1"
    assert b'name="purpose"' in bodies[0] and b"dataset" in bodies[0] and b'filename="d.npz"' in bodies[0]
    assert seen[0] == (0, 300_002) and seen[-1] == (300_002, 300_002) and len(seen) > 3  # chunk by chunk

    calls: list[int] = []

    def timeout(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(DwfConnectionError):
        _client(timeout).upload_file(data, "dataset")
    assert len(calls) == 1  # the file may have been stored: an upload is only retried when nothing was sent


def test_sse_parser_handles_comments_multiline_data_and_ids() -> None:
    lines = [": keep-alive", "", "id: evt-1", "event: message", 'data: {"a":', "data: 1}", "", "event: end", "data: x"]
    messages = list(parse_sse(lines))
    assert [(m.event, m.data, m.id) for m in messages] == [("message", '{"a":\n1}', "evt-1"), ("end", "x", "evt-1")]


def _sse_body(*events: dict[str, Any]) -> bytes:
    chunks = [f"id: {e['id']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events]
    return ("".join(chunks) + ': keep-alive\n\nevent: end\ndata: {"status": "succeeded"}\n\n').encode()


def _server(sse: bool) -> tuple[Handler, list[str]]:
    """A job that runs one metrics epoch and succeeds; its events as a stream (``sse``) or as JSON only."""
    log: list[str] = []
    events = [
        _event(1, "job created"),
        _event(2, "epoch 1/2", "metrics", {"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.9, "compression_ratio": 4}),
        _event(3, "job succeeded"),
    ]
    job_gets = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal job_gets
        path, params = request.url.path, request.url.params
        if path == "/v1/jobs/job-1":
            job_gets += 1
            log.append("job")
            if job_gets < 4:
                return httpx.Response(200, json=_job("running", progress={"epoch": 1, "epochs": 2, "fraction": 0.5}))
            return httpx.Response(200, json=_job("succeeded", metrics={"test_accuracy": 0.95, "sparsity": 0.9}))
        if path == "/v1/jobs/job-1/events" and params.get("stream") == "true":
            log.append("stream")
            if not sse:
                return httpx.Response(200, json={"object": "list", "data": [], "has_more": False})
            return httpx.Response(200, content=_sse_body(*events), headers={"content-type": "text/event-stream"})
        if path == "/v1/jobs/job-1/events":
            log.append("page")
            after = int(params.get("after", "evt-0").removeprefix("evt-"))
            visible = events if job_gets >= 4 else events[:2]
            return httpx.Response(
                200, json={"data": [e for e in visible if int(e["id"][4:]) > after], "has_more": False}
            )
        return _envelope(404, "not_found", path)

    return handler, log


@pytest.mark.parametrize("sse", [True, False], ids=["sse", "polling-fallback"])
def test_wait_follows_events_and_reports_progress(sse: bool) -> None:
    handler, log = _server(sse)
    client = _client(handler)
    job = client.get_job("job-1")
    seen: list[str] = []
    progress: list[JobProgress] = []
    final = job.wait(on_event=lambda e: seen.append(e.id), on_progress=progress.append, poll_interval=0.05, timeout=10)
    assert final is job and job.status == "succeeded" and job.metrics == {"test_accuracy": 0.95, "sparsity": 0.9}
    assert seen == ["evt-1", "evt-2", "evt-3"]  # each once, in order
    assert progress[-1].status == "succeeded" and progress[-1].accuracy == 0.95
    epoch = next(p for p in progress if p.event is not None)
    assert (epoch.loss, epoch.compression_ratio, epoch.epoch, epoch.epochs) == (0.5, 4.0, 1, 2)
    assert ("page" in log) != sse  # the fallback pages through the events; SSE needs no paging


def test_wait_raises_timeout_while_the_job_runs() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("stream") == "true":
            return httpx.Response(200, json={})  # no stream: poll
        if request.url.path.endswith("/events"):
            return httpx.Response(200, json={"data": [], "has_more": False})
        return httpx.Response(200, json=_job("running"))

    with pytest.raises(TimeoutError):
        _client(handler).get_job("job-1").wait(timeout=0.3, poll_interval=0.05)


def test_config_from_env_then_serve_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DWF_SERVER", raising=False)
    monkeypatch.delenv("DWF_API_KEY", raising=False)
    monkeypatch.setenv("DWF_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="DWF_API_KEY"):
        resolve()
    (tmp_path / "config.json").write_text(json.dumps({"url": "http://0.0.0.0:8123", "api_key": "from-file"}))
    assert (resolve().server, resolve().api_key) == ("http://127.0.0.1:8123", "from-file")
    monkeypatch.setenv("DWF_SERVER", "http://elsewhere:9000/")
    monkeypatch.setenv("DWF_API_KEY", "from-env")
    assert (resolve().server, resolve().api_key) == ("http://elsewhere:9000", "from-env")
    assert resolve(server="http://arg:1").server == "http://arg:1"
    client = Client.from_env()
    assert client.server == "http://elsewhere:9000"
    client.close()


def test_idx_folder_converts_to_an_npz_with_regular_file_members(tmp_path: Path) -> None:
    import gzip
    import stat
    import struct
    import zipfile

    import numpy as np

    from dwf_client.datasets import idx_to_npz

    def write(name: str, arr: np.ndarray) -> None:
        head = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
        with gzip.open(tmp_path / f"{name}.gz", "wb") as fh:
            fh.write(head + arr.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    write("train-images-idx3-ubyte", rng.integers(0, 255, (20, 28, 28)))
    write("train-labels-idx1-ubyte", rng.integers(0, 10, 20))
    write("t10k-images-idx3-ubyte", rng.integers(0, 255, (5, 28, 28)))
    write("t10k-labels-idx1-ubyte", rng.integers(0, 10, 5))
    out = idx_to_npz(tmp_path, tmp_path / "out" / "m.npz", n_train=12)
    with np.load(out) as npz:
        assert npz["x_train"].shape == (12, 1, 28, 28) and npz["x_train"].dtype == np.uint8
        assert npz["y_train"].dtype == np.int64 and npz["x_test"].shape == (5, 1, 28, 28)
    with zipfile.ZipFile(out) as zf:
        assert all(stat.S_ISREG(info.external_attr >> 16) for info in zf.infolist())


def test_a_dropped_stream_reconnects_with_last_event_id() -> None:
    requests: list[httpx.Request] = []

    def dropped_after_first_event() -> Iterator[bytes]:
        yield f"id: evt-1\nevent: message\ndata: {json.dumps(_event(1, 'one'))}\n\n".encode()
        raise httpx.RemoteProtocolError("peer closed connection")

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        headers = {"content-type": "text/event-stream"}
        if len(requests) == 1:
            return httpx.Response(200, content=dropped_after_first_event(), headers=headers)
        return httpx.Response(200, content=_sse_body(_event(2, "two")), headers=headers)

    events = list(_client(handler).stream_events("job-1"))
    assert [e.message for e in events] == ["one", "two"]
    assert "last-event-id" not in requests[0].headers
    assert requests[1].headers["last-event-id"] == "evt-1" and requests[1].url.params["after"] == "evt-1"
