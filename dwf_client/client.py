"""``Client`` for the dwf job service (httpx) and ``Job``, a job bound to its client (wait, cancel, download)."""

from __future__ import annotations

import hashlib
import io
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast

import httpx
from pydantic import PrivateAttr

from dwf_client import config
from dwf_client._sse import parse_sse
from dwf_client.errors import DwfApiError, DwfConnectionError, DwfError
from dwf_client.models import (
    Artifact,
    ArtifactList,
    DatasetRef,
    DwfMethod,
    Event,
    EventList,
    FileList,
    FileObject,
    JobContinue,
    JobCreate,
    JobData,
    JobList,
    JobProgress,
    ModelRef,
    Purpose,
    event_seq,
)
from dwf_client.sweeps import SweepMethods
from dwf_client.webhooks import Webhook, WebhookDelivery, WebhookInfo

UploadProgress = Callable[[int, int], None]
"""``on_progress(bytes_sent, bytes_total)`` of an upload (starts again from 0 when the upload is retried)."""
DownloadProgress = Callable[[str, int, int], None]
"""``on_progress(artifact_name, bytes_done, bytes_total)`` of a download."""

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Answers that mean the request was not processed, so even a POST without idempotency may be sent again.
RETRY_STATUSES_UNSAFE = frozenset({429, 503})
MAX_BACKOFF_S = 8.0
# A longer Retry-After (a tenant quota, say) is reported to the caller instead of slept through.
MAX_RETRY_AFTER_S = 10.0
# A 409 with this code: the first request with the same Idempotency-Key is still being processed and nothing was
# done for this one; sent again (same key) after the server's Retry-After (1 s), it answers the first one's result.
IN_USE_CODE = "idempotency_key_in_use"
UPLOAD_READ_TIMEOUT_S = 600.0
# The server sends a keep-alive comment every 15 s while a stream is idle.
SSE_READ_TIMEOUT_S = 60.0
CHUNK = 1 << 20


class _ProgressReader(io.RawIOBase):
    """A read-only file wrapper that reports how many bytes were read (httpx streams multipart files by read())."""

    def __init__(self, fh: IO[bytes], total: int, callback: UploadProgress) -> None:
        super().__init__()
        self._fh, self._total, self._callback, self._sent = fh, total, callback, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fh.fileno()

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        pos = self._fh.seek(offset, whence)
        self._sent = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._fh.read(len(view))
        view[: len(data)] = data
        if data:
            self._sent += len(data)
            self._callback(min(self._sent, self._total), self._total)
        return len(data)


def _noop() -> None:
    pass


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None


def _backoff(attempt: int, retry_after: str | None) -> float:
    delay = _retry_after(retry_after)
    if delay is not None:
        return min(delay, MAX_RETRY_AFTER_S)
    return float(min(MAX_BACKOFF_S, 0.5 * 2**attempt)) * (0.5 + random.random() / 2)


def _key_in_use(response: httpx.Response) -> bool:
    """A 409 ``idempotency_key_in_use``: the key's first request is still in flight, this one did nothing."""
    if response.status_code != 409:
        return False
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("code") == IN_USE_CODE


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("content-type", "no content type")
        raise DwfError(f"{response.request.url} answered {kind}, not JSON: is this a dwf server?") from None


def _safe_name(name: str) -> str:
    base = Path(name).name
    if not base or base in (".", "..") or base != name:
        raise DwfError(f"refusing the artifact name {name!r} (not a plain file name)")
    return base


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Job(JobData):
    """A job bound to the ``Client`` that fetched it: ``refresh``, ``wait``, ``cancel``, ``events``, ``download``."""

    _client: Any = PrivateAttr(default=None)

    @property
    def client(self) -> Client:
        """The client this job talks through."""
        if self._client is None:
            raise DwfError("this Job is not bound to a Client (build it with Client.get_job)")
        return cast(Client, self._client)

    def _update(self, other: JobData) -> Job:
        for name in type(self).model_fields:
            setattr(self, name, getattr(other, name))
        return self

    def refresh(self) -> Job:
        """Fetch the job again (updates this object in place and returns it)."""
        return self._update(self.client.get_job(self.id))

    def cancel(self) -> Job:
        """Ask the server to cancel (at once before training, else at the next training step)."""
        return self._update(self.client.cancel_job(self.id))

    def events(self, *, follow: bool = False) -> Iterator[Event]:
        """The job's events so far, or (``follow``) until the job ends."""
        if follow:
            return self.client.follow_events(self.id)
        return self.client.iter_events(self.id)

    def artifacts(self) -> list[Artifact]:
        """The job's output files (empty until it succeeds)."""
        return self.client.list_artifacts(self.id)

    def download(self, directory: str | Path, *, on_progress: DownloadProgress | None = None) -> list[Path]:
        """Download every artifact into ``directory`` (sizes and sha256 checked); returns the paths."""
        return self.client.download_artifacts(self.id, directory, on_progress=on_progress)

    def wait(
        self,
        *,
        on_progress: Callable[[JobProgress], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        use_sse: bool = True,
    ) -> Job:
        """Block until the job ends, following its event stream (SSE; paged polling when streaming fails).

        ``on_event`` gets each event once, in order; ``on_progress`` a ``JobProgress`` after each event and about
        every ``poll_interval`` seconds. Raises ``TimeoutError`` after ``timeout`` seconds (the job keeps running).
        """
        return self._update(
            self.client.wait_for_job(
                self.id,
                on_progress=on_progress,
                on_event=on_event,
                timeout=timeout,
                poll_interval=poll_interval,
                use_sse=use_sse,
            )
        )


class _Follower(threading.Thread):
    """Runs ``Client.follow_events`` in the background and hands events (then None, or an exception) to a queue."""

    def __init__(self, client: Client, job_id: str, poll_interval: float, use_sse: bool) -> None:
        super().__init__(name=f"dwf-events-{job_id}", daemon=True)
        self.client, self.job_id, self.poll_interval, self.use_sse = client, job_id, poll_interval, use_sse
        self.items: queue.Queue[Event | BaseException | None] = queue.Queue()
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for event in self.client.follow_events(
                self.job_id, poll_interval=self.poll_interval, use_sse=self.use_sse, stop=self.stop
            ):
                self.items.put(event)
                if self.stop.is_set():
                    return
            self.items.put(None)
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            self.items.put(exc)


class Client(SweepMethods):
    """The dwf job service over HTTP: files, jobs, events, artifacts. Errors are ``DwfApiError``.

    ``Client(server, api_key)``, or ``Client.from_env()`` (DWF_SERVER / DWF_API_KEY, else the config.json that
    ``dwf serve`` writes). POSTs that create jobs carry an ``Idempotency-Key`` that stays the same across retries.
    """

    def __init__(
        self,
        server: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.server = server.rstrip("/")
        self.max_retries = max_retries
        self._sleep = sleep
        self._transport = transport
        self._http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "dwf-client/0.1"},
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_env(
        cls, server: str | None = None, api_key: str | None = None, data_dir: Path | None = None, **kwargs: Any
    ) -> Client:
        """Arguments first, then DWF_SERVER / DWF_API_KEY, then the config.json of ``dwf serve`` in the data dir."""
        settings = config.resolve(server, api_key, data_dir)
        return cls(settings.server, settings.api_key, **kwargs)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        safe: bool,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        files: Callable[[], tuple[dict[str, Any], Callable[[], None]]] | None = None,
        data: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> httpx.Response:
        """Send with retries: ``safe`` requests (GETs, idempotent POSTs) on any transport error or 408/429/5xx;
        others only when nothing was sent (connect errors) or the server says it did not process them (429, 503).
        A 409 ``idempotency_key_in_use`` (the key's first request, an earlier attempt say, not finished yet) is sent
        again with the same key after its Retry-After, which then answers the first request's job."""
        attempt = 0
        while True:
            close: Callable[[], None] = _noop
            try:
                body_files = None
                if files is not None:
                    body_files, close = files()
                extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
                response = self._http.request(
                    method, path, params=params, json=json, headers=headers, files=body_files, data=data, **extra
                )
            except (httpx.TransportError, httpx.DecodingError) as exc:
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if (safe or unsent) and attempt < self.max_retries:
                    self._sleep(_backoff(attempt, None))
                    attempt += 1
                    continue
                raise DwfConnectionError(f"cannot reach {self.server}: {exc or type(exc).__name__}") from exc
            finally:
                close()
            retryable = RETRY_STATUSES if safe else RETRY_STATUSES_UNSAFE
            wait = _retry_after(response.headers.get("retry-after"))
            patient = wait is None or wait <= MAX_RETRY_AFTER_S
            again = response.status_code in retryable or _key_in_use(response)
            if again and attempt < self.max_retries and patient:
                self._sleep(_backoff(attempt, response.headers.get("retry-after")))
                attempt += 1
                continue
            if response.is_error:
                raise DwfApiError.from_response(response)
            return response

    def _get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return _json(self._request("GET", path, safe=True, params=clean))

    def _job(self, body: Any) -> Job:
        job = Job.model_validate(body)
        job._client = self
        return job

    # ----------------------------------------------------------------------------------------------------- files

    def upload_file(
        self, path: str | Path, purpose: Purpose, *, on_progress: UploadProgress | None = None
    ) -> FileObject:
        """Upload a model (.onnx or a transformers config.json), weights (.safetensors) or dataset; streamed from disk,
        never read whole."""
        path = Path(path)
        if not path.is_file():
            raise DwfError(f"{path}: no such file")
        total = path.stat().st_size

        def files() -> tuple[dict[str, Any], Callable[[], None]]:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the caller of files()
            body: IO[bytes] = fh
            if on_progress is not None:
                on_progress(0, total)
                body = cast(IO[bytes], _ProgressReader(fh, total, on_progress))
            return {"file": (path.name, body, "application/octet-stream")}, fh.close

        response = self._request(
            "POST",
            "/v1/files",
            safe=False,
            files=files,
            data={"purpose": purpose},
            timeout=httpx.Timeout(self._http.timeout.connect or 30.0, read=UPLOAD_READ_TIMEOUT_S, write=60.0),
        )
        return FileObject.model_validate(_json(response))

    def get_file(self, file_id: str) -> FileObject:
        """One uploaded file."""
        return FileObject.model_validate(self._get(f"/v1/files/{file_id}"))

    def list_files(self, *, purpose: Purpose | None = None, after: str | None = None, limit: int = 20) -> FileList:
        """A page of files, newest first."""
        return FileList.model_validate(self._get("/v1/files", purpose=purpose, after=after, limit=limit))

    # ------------------------------------------------------------------------------------------------------ jobs

    def create_job(
        self, request: JobCreate | JobContinue | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Job:
        """``POST /v1/jobs``; a generated Idempotency-Key makes retries return the same job, never a second one.

        A ``JobContinue`` (or a mapping with ``from_job``) continues a finished DWF job: see ``continue_job``.
        """
        body = request.body() if isinstance(request, JobCreate | JobContinue) else dict(request)
        key = idempotency_key or f"dwf-client-{uuid.uuid4()}"
        response = self._request("POST", "/v1/jobs", safe=True, json=body, headers={"Idempotency-Key": key})
        return self._job(_json(response))

    def submit(
        self,
        model: str | Path,
        dataset: str | Path,
        *,
        depth: int | None = None,
        lam: float | None = None,
        target_sparsity: float | None = None,
        epochs: int | None = None,
        lr: float | None = None,
        method: str = "dwf",
        weights: str | Path | None = None,
        num_classes: int | None = None,
        val_fraction: float | None = None,
        seed: int | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        on_upload: Callable[[str, int, int], None] | None = None,
        webhook: str | None = None,
        webhook_secret: str | None = None,
        **method_options: Any,
    ) -> Job:
        """Upload what needs uploading and create a job; returns it at once (``job.wait()`` follows it).

        ``model``: a zoo/torchvision/timm name (``lenet_300_100``, ``torchvision:resnet18``, ``timm:resnet18``: random
        weights), an .onnx file path, or a ``file-…`` id already uploaded. ``dataset``: a file path, a ``file-…`` id,
        or ``mnist-idx:DIR`` (converted here to .npz). ``on_upload(filename, bytes_sent, bytes_total)`` reports upload
        progress. Other DWF settings (batch_size, optimizer, threshold, …) go in ``method_options``. ``webhook``: a URL
        called (signed with ``webhook_secret``, or a generated secret returned once in ``job.webhook.secret``) on every
        status change of this job.
        """
        model_ref = self._model_ref(model, num_classes, on_upload)
        weights_id = self._file_ref(weights, "weights", on_upload) if weights is not None else None
        dataset_id = self._dataset_ref(dataset, on_upload)
        request = JobCreate(
            model=model_ref,
            weights_file_id=weights_id,
            dataset=DatasetRef(file_id=dataset_id, val_fraction=val_fraction),
            method=DwfMethod(
                type=method,
                depth=depth,
                lam=lam,
                target_sparsity=target_sparsity,
                epochs=epochs,
                lr=lr,
                **method_options,
            ),
            seed=seed,
            metadata=dict(metadata) if metadata else None,
            webhook=Webhook(url=webhook, secret=webhook_secret) if webhook else None,
        )
        return self.create_job(request, idempotency_key=idempotency_key)

    def continue_job(
        self,
        from_job: str,
        *,
        target_sparsity: float,
        epochs: int | None = None,
        seed: int | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        webhook: str | None = None,
        webhook_secret: str | None = None,
        **method_options: Any,
    ) -> Job:
        """Create a job that starts from the trained factors of ``from_job`` (a succeeded DWF job of yours) and trains
        on to ``target_sparsity``, above the parent's; ``job.parent_job_id`` links it. The model, the dataset and every
        method setting not given here (depth, lr, epochs…) are the parent's; 409 ``parent_state_unavailable`` once
        the parent's checkpoint is past the server's retention (DWF_CHECKPOINT_RETENTION_SECONDS)."""
        request = JobContinue(
            from_job=from_job,
            method=DwfMethod(target_sparsity=target_sparsity, epochs=epochs, **method_options),
            seed=seed,
            metadata=dict(metadata) if metadata else None,
            webhook=Webhook(url=webhook, secret=webhook_secret) if webhook else None,
        )
        return self.create_job(request, idempotency_key=idempotency_key)

    def _upload_progress(self, path: Path, on_upload: Callable[[str, int, int], None] | None) -> UploadProgress | None:
        if on_upload is None:
            return None
        return lambda sent, total: on_upload(path.name, sent, total)

    def _file_ref(self, value: str | Path, purpose: Purpose, on_upload: Callable[[str, int, int], None] | None) -> str:
        if isinstance(value, str) and value.startswith("file-") and not Path(value).exists():
            return value
        path = Path(value).expanduser()
        return self.upload_file(path, purpose, on_progress=self._upload_progress(path, on_upload)).id

    def _model_ref(
        self, model: str | Path, num_classes: int | None, on_upload: Callable[[str, int, int], None] | None
    ) -> ModelRef:
        text = str(model)
        path = Path(text).expanduser()
        looks_like_file = isinstance(model, Path) or path.suffix.lower() in (".onnx", ".json") or os.sep in text
        if path.is_file() or (looks_like_file and not text.startswith(("torchvision:", "timm:"))):
            return ModelRef(file_id=self._file_ref(path, "model", on_upload), num_classes=num_classes)
        if text.startswith("file-"):
            return ModelRef(file_id=text, num_classes=num_classes)
        return ModelRef(name=text, num_classes=num_classes)

    def _dataset_ref(self, dataset: str | Path, on_upload: Callable[[str, int, int], None] | None) -> str:
        from dwf_client.datasets import IDX_PREFIX, idx_to_npz

        text = str(dataset)
        if isinstance(dataset, str) and text.startswith(IDX_PREFIX):
            import tempfile

            idx_dir = Path(text.removeprefix(IDX_PREFIX)).expanduser()
            with tempfile.TemporaryDirectory(prefix="dwf-idx-") as tmp:
                npz = idx_to_npz(idx_dir, Path(tmp) / f"{idx_dir.resolve().name or 'idx'}.npz")
                return self._file_ref(npz, "dataset", on_upload)
        return self._file_ref(dataset, "dataset", on_upload)

    def get_job(self, job_id: str) -> Job:
        """One job."""
        return self._job(self._get(f"/v1/jobs/{job_id}"))

    def list_jobs(
        self, *, status: str | None = None, sweep_id: str | None = None, after: str | None = None, limit: int = 20
    ) -> JobList:
        """A page of jobs, newest first (``after``: the ``last_id`` of the previous page; ``sweep_id``: only that
        sweep's children)."""
        body = self._get("/v1/jobs", status=status, sweep_id=sweep_id, after=after, limit=limit)
        page = JobList.model_validate({**body, "data": []})
        page.data = [self._job(item) for item in body.get("data", [])]
        return page

    def iter_jobs(self, *, status: str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job, newest first, page by page."""
        after: str | None = None
        while True:
            page = self.list_jobs(status=status, after=after, limit=page_size)
            yield from cast(list[Job], page.data)
            if not page.has_more or not page.last_id:
                return
            after = page.last_id

    def cancel_job(self, job_id: str) -> Job:
        """``POST /v1/jobs/{id}/cancel`` (idempotent: cancelling a cancelled job answers the job)."""
        key = f"dwf-client-{uuid.uuid4()}"
        response = self._request("POST", f"/v1/jobs/{job_id}/cancel", safe=True, headers={"Idempotency-Key": key})
        return self._job(_json(response))

    # -------------------------------------------------------------------------------------------------- webhooks

    def set_webhook(self, url: str, *, secret: str | None = None) -> WebhookInfo:
        """``PUT /v1/webhook``: the URL called on every status change of your jobs (those without their own). Without
        ``secret`` the server generates one: it is in the answer's ``secret``, and never shown again."""
        body = Webhook(url=url, secret=secret).model_dump(exclude_none=True)
        return WebhookInfo.model_validate(_json(self._request("PUT", "/v1/webhook", safe=True, json=body)))

    def get_webhook(self) -> WebhookInfo | None:
        """Your webhook's URL, or None when none is set."""
        try:
            return WebhookInfo.model_validate(self._get("/v1/webhook"))
        except DwfApiError as exc:
            if exc.status == 404:
                return None
            raise

    def delete_webhook(self) -> bool:
        """Remove your webhook; False when none was set."""
        try:
            self._request("DELETE", "/v1/webhook", safe=True)
        except DwfApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def list_webhook_deliveries(
        self, job_id: str, *, after: str | None = None, limit: int = 100
    ) -> list[WebhookDelivery]:
        """A page of the job's webhook deliveries, oldest first (status, attempts, last status code or error)."""
        body = self._get(f"/v1/jobs/{job_id}/webhook_deliveries", after=after, limit=limit)
        return [WebhookDelivery.model_validate(item) for item in body["data"]]

    # ---------------------------------------------------------------------------------------------------- events

    def list_events(self, job_id: str, *, after: str | None = None, limit: int = 100) -> EventList:
        """A page of events, oldest first (``after``: the id of the last event seen)."""
        return EventList.model_validate(self._get(f"/v1/jobs/{job_id}/events", after=after, limit=limit))

    def iter_events(self, job_id: str, *, after: str | None = None) -> Iterator[Event]:
        """Every event so far, oldest first."""
        while True:
            page = self.list_events(job_id, after=after)
            yield from page.data
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id

    def stream_events(self, job_id: str, *, after: str | None = None) -> Iterator[Event]:
        """Server-sent events until the job ends; reconnects (with Last-Event-ID) after a dropped connection.

        Raises ``DwfConnectionError`` when the stream cannot be (re)opened ``max_retries + 1`` times in a row.
        """
        failures = 0
        while True:
            try:
                for event in self._stream_once(job_id, after):
                    after, failures = event.id, 0
                    yield event
                return
            except (httpx.TransportError, httpx.DecodingError) as exc:
                failures += 1
                if failures > self.max_retries:
                    raise DwfConnectionError(f"event stream of {job_id} from {self.server} failed: {exc}") from exc
                self._sleep(_backoff(failures - 1, None))

    def _stream_once(self, job_id: str, after: str | None) -> Iterator[Event]:
        headers = {"Accept": "text/event-stream"}
        params: dict[str, str] = {"stream": "true"}
        if after is not None:
            headers["Last-Event-ID"] = after
            params["after"] = after
        timeout = httpx.Timeout(self._http.timeout.connect or 30.0, read=SSE_READ_TIMEOUT_S)
        with self._http.stream(
            "GET", f"/v1/jobs/{job_id}/events", params=params, headers=headers, timeout=timeout
        ) as response:
            if response.is_error:
                raise DwfApiError.from_response(response)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise _NoStream(f"the server answered {response.headers.get('content-type')!r}, not an event stream")
            for message in parse_sse(response.iter_lines()):
                if message.event == "end":
                    return
                if message.data:
                    yield Event.model_validate_json(message.data)

    def follow_events(
        self,
        job_id: str,
        *,
        after: str | None = None,
        poll_interval: float = 1.0,
        use_sse: bool = True,
        stop: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Every event from ``after`` on until the job ends: SSE first; paged polling if streaming fails."""
        seen = -1 if after is None else event_seq(after)
        if use_sse:
            try:
                for event in self.stream_events(job_id, after=after):
                    if event.seq > seen:
                        seen, after = event.seq, event.id
                        yield event
                return
            except (DwfConnectionError, _NoStream):
                pass  # fall back to polling from the last event seen
        stop = stop or threading.Event()
        while not stop.is_set():
            done = self.get_job(job_id).done  # read before the events so none written before the end is missed
            fresh = False
            for event in self.iter_events(job_id, after=after):
                if event.seq > seen:
                    seen, after, fresh = event.seq, event.id, True
                    yield event
            if done:
                return
            if not fresh:
                stop.wait(poll_interval)

    def wait_for_job(
        self,
        job_id: str,
        *,
        on_progress: Callable[[JobProgress], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        use_sse: bool = True,
    ) -> Job:
        """See ``Job.wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get_job(job_id)
        metrics: dict[str, Any] = {}
        ended_at: float | None = None  # when a job GET first said the job ended

        def report(event: Event | None) -> None:
            if on_progress is not None:
                on_progress(JobProgress(job=job, event=event, metrics={**metrics, **(job.metrics or {})}))

        report(None)
        follower = _Follower(self, job_id, poll_interval, use_sse)
        follower.start()
        next_poll = time.monotonic() + poll_interval
        try:
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
                wait_s = max(0.0, next_poll - now)
                if deadline is not None:
                    wait_s = min(wait_s, max(0.0, deadline - now))
                try:
                    item = follower.items.get(timeout=wait_s)
                except queue.Empty:
                    pass
                else:
                    if isinstance(item, BaseException):
                        raise item
                    if item is None:  # the event stream ended, so did the job
                        job = self.get_job(job_id)
                        report(None)
                        return job
                    if on_event is not None:
                        on_event(item)
                    if item.type == "metrics" and item.data:
                        metrics = dict(item.data)
                        job = self.get_job(job_id)
                        report(item)
                        next_poll = time.monotonic() + poll_interval
                if time.monotonic() >= next_poll:
                    job = self.get_job(job_id)
                    report(None)
                    next_poll = time.monotonic() + poll_interval
                    if job.done:
                        ended_at = ended_at or time.monotonic()
                        if time.monotonic() - ended_at > 10 * max(poll_interval, 0.5):
                            return job  # the stream did not end in time; the job's status is authoritative
        finally:
            follower.stop.set()

    # ------------------------------------------------------------------------------------------------- artifacts

    def list_artifacts(self, job_id: str) -> list[Artifact]:
        """A job's artifacts (empty until it succeeds)."""
        return ArtifactList.model_validate(self._get(f"/v1/jobs/{job_id}/artifacts")).data

    def download_artifact(
        self, job_id: str, artifact: Artifact, directory: str | Path, *, on_progress: DownloadProgress | None = None
    ) -> Path:
        """Stream one artifact to ``directory/<name>`` (via a .part file), checking its size and sha256."""
        name = _safe_name(artifact.name)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        dest = directory / name
        if dest.is_file() and dest.stat().st_size == artifact.bytes and _sha256(dest) == artifact.sha256:
            if on_progress is not None:
                on_progress(name, artifact.bytes, artifact.bytes)
            return dest
        part = directory / f".{name}.part"
        attempt = 0
        while True:
            try:
                self._download_once(job_id, artifact, part, on_progress)
                break
            except (httpx.TransportError, httpx.DecodingError) as exc:
                if attempt >= self.max_retries:
                    part.unlink(missing_ok=True)
                    raise DwfConnectionError(f"download of {name} from {self.server} failed: {exc}") from exc
                self._sleep(_backoff(attempt, None))
                attempt += 1
            except BaseException:
                part.unlink(missing_ok=True)
                raise
        os.replace(part, dest)
        return dest

    def _download_once(self, job_id: str, artifact: Artifact, part: Path, on_progress: DownloadProgress | None) -> None:
        url = artifact.url or f"/v1/jobs/{job_id}/artifacts/{artifact.name}"
        with self._http.stream("GET", url) as response:
            if not (response.is_redirect and "location" in response.headers):
                self._save(response, artifact, part, on_progress)
                return
            target = response.url.join(response.headers["location"])
        # A 307 to the blob store's short-lived presigned URL (S3 storage): fetched by a client of its own, so the
        # API key is never sent there; the bytes are checked against the artifact's size and sha256 all the same.
        timeout = self._http.timeout
        headers = {"User-Agent": "dwf-client/0.1"}
        with (
            httpx.Client(timeout=timeout, transport=self._transport, headers=headers) as blob_store,
            blob_store.stream("GET", target) as response,
        ):
            self._save(response, artifact, part, on_progress)

    @staticmethod
    def _save(response: httpx.Response, artifact: Artifact, part: Path, on_progress: DownloadProgress | None) -> None:
        """Write a download answer to ``part``; DwfApiError for an error answer, DwfError for wrong bytes."""
        if response.is_error or response.is_redirect:
            raise DwfApiError.from_response(response)
        digest, done = hashlib.sha256(), 0
        with open(part, "wb") as fh:
            for chunk in response.iter_bytes(CHUNK):
                fh.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(artifact.name, done, artifact.bytes)
        if done != artifact.bytes or digest.hexdigest() != artifact.sha256:
            raise DwfError(
                f"{artifact.name}: downloaded {done} bytes with sha256 {digest.hexdigest()[:12]}…, expected "
                f"{artifact.bytes} bytes with {artifact.sha256[:12]}…"
            )

    def download_artifacts(
        self, job_id: str, directory: str | Path, *, on_progress: DownloadProgress | None = None
    ) -> list[Path]:
        """Download every artifact of the job; raises ``DwfError`` when it has none (not succeeded yet)."""
        artifacts = self.list_artifacts(job_id)
        if not artifacts:
            job = self.get_job(job_id)
            raise DwfError(f"job {job_id} has no artifacts (status {job.status}); only succeeded jobs have them")
        return [self.download_artifact(job_id, a, directory, on_progress=on_progress) for a in artifacts]


class _NoStream(DwfError):
    """The server did not answer with an event stream."""
