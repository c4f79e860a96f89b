"""Sweeps in the SDK: ``client.submit_sweep(model, dataset, grid)`` makes one job per grid point; ``Sweep`` waits for
them, cancels them and downloads the sweep's frontier.json/.png (``/v1/sweeps``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, PrivateAttr

from dwf_client.errors import DwfError
from dwf_client.models import Artifact, ArtifactList, DatasetRef, ModelRef, _Response

if TYPE_CHECKING:
    from dwf_client.client import Client

# Sweep statuses after which nothing changes (see dwf_service/sweeps.py).
SWEEP_TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "partially_failed", "cancelled"})


class SweepChild(_Response):
    """One child job of a sweep: its grid point, status and (once succeeded) headline test metrics."""

    job_id: str
    point: dict[str, Any] = Field(default_factory=dict)
    status: str
    epoch: int | None = None
    epochs: int | None = None
    test_accuracy: float | None = None
    sparsity: float | None = None
    compression_ratio: float | None = None
    mac_fraction: float | None = None
    error_code: str | None = None
    url: str | None = None


class SweepData(_Response):
    """A sweep as the API returns it."""

    id: str
    object: str = "sweep"
    status: str
    model: dict[str, Any] = Field(default_factory=dict)
    dataset: dict[str, Any] = Field(default_factory=dict)
    method: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    children: list[SweepChild] = Field(default_factory=list)
    cancel_requested: bool = False
    created_at: str
    finished_at: str | None = None
    urls: dict[str, str] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        """True once every child has ended and the frontier is stored."""
        return self.status in SWEEP_TERMINAL


class SweepList(_Response):
    """A page of sweeps, newest first."""

    object: str = "list"
    data: list[SweepData]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class Sweep(SweepData):
    """A sweep bound to the client that fetched it."""

    _client: Client | None = PrivateAttr(default=None)

    @property
    def client(self) -> Client:
        if self._client is None:
            raise DwfError("this Sweep is not bound to a Client")
        return self._client

    def refresh(self) -> Sweep:
        return self.client.get_sweep(self.id)

    def cancel(self) -> Sweep:
        return self.client.cancel_sweep(self.id)

    def wait(
        self, *, on_update: Callable[[Sweep], None] | None = None, timeout: float | None = None, poll: float = 2.0
    ) -> Sweep:
        return self.client.wait_for_sweep(self.id, on_update=on_update, timeout=timeout, poll=poll)

    def download(self, directory: str | Path) -> list[Path]:
        return self.client.download_sweep_artifacts(self.id, directory)


class SweepMethods:
    """The /v1/sweeps methods of ``Client`` (mixed in)."""

    if TYPE_CHECKING:
        _request: Any
        _get: Callable[..., Any]
        _model_ref: Callable[..., ModelRef]
        _file_ref: Callable[..., str]
        _dataset_ref: Callable[..., str]
        download_artifact: Callable[..., Path]
        _sleep: Callable[[float], None]

    def _sweep(self, body: Any) -> Sweep:
        sweep = Sweep.model_validate(body)
        sweep._client = self  # type: ignore[assignment]
        return sweep

    def create_sweep(self, request: Mapping[str, Any], *, idempotency_key: str | None = None) -> Sweep:
        """``POST /v1/sweeps`` with a body like a job's plus ``grid``; retries reuse one Idempotency-Key."""
        key = idempotency_key or f"dwf-client-{uuid.uuid4()}"
        response = self._request("POST", "/v1/sweeps", safe=True, json=dict(request), headers={"Idempotency-Key": key})
        return self._sweep(response.json())

    def submit_sweep(
        self,
        model: str | Path,
        dataset: str | Path,
        grid: Mapping[str, Sequence[Any]],
        *,
        weights: str | Path | None = None,
        num_classes: int | None = None,
        val_fraction: float | None = None,
        seed: int | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        on_upload: Callable[[str, int, int], None] | None = None,
        **method: Any,
    ) -> Sweep:
        """Upload what needs uploading (as ``submit``) and create a sweep: one job per combination of ``grid``'s
        values (keys among type, depth, lam, target_sparsity, target_macs); ``method`` holds the settings every child
        shares (epochs=…, lr=…)."""
        body: dict[str, Any] = {
            "model": self._model_ref(model, num_classes, on_upload).model_dump(exclude_none=True),
            "dataset": DatasetRef(file_id=self._dataset_ref(dataset, on_upload), val_fraction=val_fraction).model_dump(
                exclude_none=True
            ),
            "method": {k: v for k, v in method.items() if v is not None},
            "grid": {k: list(v) for k, v in grid.items()},
        }
        if weights is not None:
            body["weights_file_id"] = self._file_ref(weights, "weights", on_upload)
        if seed is not None:
            body["seed"] = seed
        if metadata:
            body["metadata"] = dict(metadata)
        return self.create_sweep(body, idempotency_key=idempotency_key)

    def get_sweep(self, sweep_id: str) -> Sweep:
        return self._sweep(self._get(f"/v1/sweeps/{sweep_id}"))

    def list_sweeps(self, *, after: str | None = None, limit: int = 20) -> SweepList:
        return SweepList.model_validate(self._get("/v1/sweeps", after=after, limit=limit))

    def cancel_sweep(self, sweep_id: str) -> Sweep:
        """Cancel every unfinished child of the sweep (finished children keep their results)."""
        return self._sweep(self._request("POST", f"/v1/sweeps/{sweep_id}/cancel", safe=True).json())

    def wait_for_sweep(
        self,
        sweep_id: str,
        *,
        on_update: Callable[[Sweep], None] | None = None,
        timeout: float | None = None,
        poll: float = 2.0,
    ) -> Sweep:
        """Poll until the sweep has finished (every child ended, frontier stored); ``on_update`` gets each poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sweep = self.get_sweep(sweep_id)
            if on_update is not None:
                on_update(sweep)
            if sweep.done:
                return sweep
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"sweep {sweep_id} still {sweep.status} after {timeout} s")
            self._sleep(poll)

    def list_sweep_artifacts(self, sweep_id: str) -> list[Artifact]:
        """frontier.json and frontier.png once the sweep has finished (empty before)."""
        return ArtifactList.model_validate(self._get(f"/v1/sweeps/{sweep_id}/artifacts")).data

    def download_sweep_artifacts(self, sweep_id: str, directory: str | Path) -> list[Path]:
        """Download the sweep's artifacts (size and sha256 checked); DwfError before it has finished."""
        artifacts = self.list_sweep_artifacts(sweep_id)
        if not artifacts:
            raise DwfError(f"sweep {sweep_id} has no artifacts yet (status {self.get_sweep(sweep_id).status})")
        return [self.download_artifact(sweep_id, a, directory) for a in artifacts]
