"""Typed mirrors of the API's JSON bodies (``/v1`` files, jobs, events, artifacts).

Kept independent of the server package, and tolerant of fields added to it later (``extra="allow"``): the server
validates requests (422 names the offending field), the SDK passes unknown fields through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dwf_client.webhooks import Webhook, WebhookInfo

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
Purpose = Literal["model", "weights", "dataset"]


def event_seq(event_id: str) -> int:
    """The number in an event id ``evt-<n>`` (-1 if there is none)."""
    try:
        return int(event_id.rsplit("-", 1)[-1])
    except ValueError:
        return -1


class _Response(BaseModel):
    """A response body: fields the server adds later are kept, not refused."""

    model_config = ConfigDict(extra="allow")


class _Request(BaseModel):
    """A request body: fields this SDK does not know yet are sent as given, for the server to check."""

    model_config = ConfigDict(extra="allow")

    def body(self) -> dict[str, Any]:
        """The JSON body, without the unset (``None``) fields so the server's defaults (or, for a continued job, the
        parent's settings) apply."""
        return self.model_dump(mode="json", exclude_none=True)


# ---------------------------------------------------------------------------------------------------- requests


class ModelRef(_Request):
    """Either an uploaded ONNX file (``file_id``) or a zoo/torchvision/timm architecture ``name``."""

    file_id: str | None = None
    name: str | None = None
    num_classes: int | None = None


class DatasetRef(_Request):
    """An uploaded dataset file and how to split/normalize it."""

    file_id: str
    val_fraction: float | None = None
    normalize: Literal["auto", "none", "standardize"] | None = None


class DwfMethod(_Request):
    """The DWF settings; ``None`` leaves a field to the server's default."""

    type: str = "dwf"
    depth: int | None = None
    lam: float | None = None
    target_sparsity: float | None = None
    epochs: int | None = None
    lr: float | None = None
    # The LR probe (None: on when lr is not given).
    lr_probe: bool | None = None
    batch_size: int | None = None
    # Processes (GPUs, or CPU processes) that train the job together with DDP on one worker, 1 to 8.
    devices: int | None = None
    optimizer: Literal["sgd", "adam"] | None = None
    momentum: float | None = None
    init: Literal["varmatch", "balanced"] | None = None
    threshold: Literal["auto"] | float | None = None
    tolerance: float | None = None
    warmup_epochs: float | None = None
    max_grad_norm: float | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    # Compression ratios (> 1) at which the model is also cut and saved (frontier-crN.sparse.safetensors).
    frontier: list[float] | None = None
    # Masked fine-tuning epochs after the cut (DWF: None = only when a target cut hurt, 0 = never).
    finetune_epochs: int | None = None
    # DWF: plain training epochs first, DWF then starts from those weights (0 / None: from scratch).
    dense_epochs: int | None = None
    # DWF from a trained model: weight α in [0, 1] of distillation from it (None: the server's default, 0.5 from
    # uploaded weights that predict the data, off otherwise).
    distill: float | None = None
    distill_temperature: float | None = None
    distill_schedule: Literal["constant", "linear"] | None = None
    # "weights" (DWF), "units" (D-Gating: whole Linear neurons / conv channels removed) or "both".
    structure: Literal["weights", "units", "both"] | None = None
    # DWF with target_sparsity: "gradual" (default) or "final".
    cut: Literal["gradual", "final"] | None = None
    # units/both with target_macs: "gradual" (units masked during training) or "final".
    unit_cut: Literal["gradual", "final"] | None = None
    # units/both with target_macs: keep each layer's units a multiple of this (e.g. 16 for CPU GEMM blocks).
    unit_multiple: int | None = None
    # units/both: fraction of the dense model's Linear/Conv MACs to keep, in (0, 1].
    target_macs: float | None = None
    # units/both: MAC fractions at which the model is also cut and evaluated ([]: none).
    mac_frontier: list[float] | None = None
    # Random transforms of every training batch, image inputs only: "shift", "shift:N", "flip" or a list of them.
    augment: str | None = None
    # Training arithmetic: "auto" (bf16 autocast on a GPU, float32 on a CPU), "fp32" or "bf16".
    precision: Literal["auto", "fp32", "bf16"] | None = None


class JobCreate(_Request):
    """Body of ``POST /v1/jobs``."""

    model: ModelRef
    weights_file_id: str | None = None
    dataset: DatasetRef
    method: DwfMethod = Field(default_factory=DwfMethod)
    seed: int | None = None
    metadata: dict[str, str] | None = None
    # Called on every status change of this job (instead of the tenant's webhook); see dwf_client.webhooks.
    webhook: Webhook | None = None


class JobContinue(_Request):
    """Body of ``POST /v1/jobs`` that continues a finished DWF job (``from_job``) from its trained factors toward a
    higher ``method.target_sparsity``; the model, dataset and method settings left unset are the parent's."""

    from_job: str
    method: DwfMethod = Field(default_factory=DwfMethod)
    seed: int | None = None
    metadata: dict[str, str] | None = None
    webhook: Webhook | None = None


# --------------------------------------------------------------------------------------------------- responses


class FileObject(_Response):
    """An uploaded file."""

    id: str
    object: str = "file"
    bytes: int
    sha256: str
    filename: str
    purpose: str
    format: str
    created_at: str


class JobError(_Response):
    """Why a job failed."""

    code: str | None = None
    message: str | None = None
    param: str | None = None


class Progress(_Response):
    """Where training stands."""

    epoch: int | None = None
    epochs: int | None = None
    fraction: float | None = None
    eta_seconds: float | None = None


class JobData(_Response):
    """A job as the API returns it (the same shape from POST, GET and cancel)."""

    id: str
    object: str = "job"
    status: str
    phase: str | None = None
    model: dict[str, Any] = Field(default_factory=dict)
    weights_file_id: str | None = None
    dataset: dict[str, Any] = Field(default_factory=dict)
    method: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    metadata: dict[str, str] | None = None
    progress: Progress = Field(default_factory=Progress)
    metrics: dict[str, Any] | None = None
    error: JobError | None = None
    attempts: int = 0
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    # The sweep this job is a child of (``client.submit_sweep``), or None.
    sweep_id: str | None = None
    # The job's own webhook; its secret only in the create answer that generated it.
    webhook: WebhookInfo | None = None
    # The finished job this one continues (created with from_job), or None.
    parent_job_id: str | None = None
    urls: dict[str, str] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        """True once the job is succeeded, failed or cancelled."""
        return self.status in TERMINAL_STATUSES


class Event(_Response):
    """One job event (``id`` is ``evt-<n>`` and usable as the ``after`` cursor)."""

    id: str
    object: str = "job.event"
    created_at: str
    level: str
    type: str
    message: str
    data: dict[str, Any] | None = None

    @property
    def seq(self) -> int:
        """The event's position in the job's log (the number in ``evt-<n>``; -1 if unparsable)."""
        return event_seq(self.id)


class Artifact(_Response):
    """One downloadable output of a job."""

    name: str
    bytes: int
    sha256: str
    url: str


class FileList(_Response):
    """A page of files, newest first."""

    object: str = "list"
    data: list[FileObject]
    has_more: bool = False


class JobList(_Response):
    """A page of jobs, newest first."""

    object: str = "list"
    data: list[JobData]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class EventList(_Response):
    """A page of events, oldest first."""

    object: str = "list"
    data: list[Event]
    has_more: bool = False


class ArtifactList(_Response):
    """A job's artifacts."""

    object: str = "list"
    data: list[Artifact]


class ErrorBody(_Response):
    """The error object of the envelope ``{"error": {type, code, message, param}}``."""

    type: str | None = None
    code: str | None = None
    message: str | None = None
    param: str | None = None


# ----------------------------------------------------------------------------------------- client-side helpers


@dataclass
class JobProgress:
    """What ``Job.wait(on_progress=...)`` reports: the latest job snapshot plus its last epoch metrics."""

    job: JobData
    event: Event | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """The job's status."""
        return self.job.status

    @property
    def phase(self) -> str | None:
        """loading, training, collapsing, evaluating or exporting (while running)."""
        return self.job.phase

    @property
    def epoch(self) -> int | None:
        """The last finished epoch, or the one in progress."""
        if self.job.progress.epoch is not None:
            return self.job.progress.epoch
        value = self.metrics.get("epoch")
        return value if isinstance(value, int) else None

    @property
    def epochs(self) -> int | None:
        """How many epochs the job trains."""
        return self.job.progress.epochs

    @property
    def fraction(self) -> float | None:
        """Fraction of all training steps done (0..1)."""
        return self.job.progress.fraction

    @property
    def eta_seconds(self) -> float | None:
        """The server's estimate of the training time left."""
        return self.job.progress.eta_seconds

    def _metric(self, *names: str) -> float | None:
        for name in names:
            value = self.metrics.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        return None

    @property
    def loss(self) -> float | None:
        """Training loss of the last epoch."""
        return self._metric("train_loss", "loss")

    @property
    def accuracy(self) -> float | None:
        """Validation accuracy of the last epoch (test accuracy once the job succeeded)."""
        return self._metric("test_accuracy", "val_accuracy") if self.job.done else self._metric("val_accuracy")

    @property
    def sparsity(self) -> float | None:
        """Fraction of zero weights."""
        return self._metric("sparsity")

    @property
    def compression_ratio(self) -> float | None:
        """Total weights / non-zero weights."""
        return self._metric("compression_ratio")
