"""Request and response bodies (pydantic); requests refuse unknown fields so typos fail loudly with 422."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from dwf_service.webhooks import check_secret, check_url

# Mirrors of dwf_core's ranges (dwf_core.factorize.MAX_DEPTH, dwf_core.config), kept here so the API needs no torch;
# the worker's validation step re-checks everything with dwf_core itself.
MAX_DEPTH = 8
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_DEVICES = 8  # dwf_core.distributed.MAX_DEVICES
DEFAULT_TEMPERATURE = 4.0  # dwf_core.distill.DEFAULT_TEMPERATURE
MAX_TEMPERATURE = 100.0  # dwf_core.distill.MAX_TEMPERATURE
MAX_UNIT_MULTIPLE = 1024  # dwf_core.config.MAX_UNIT_MULTIPLE
# timm:NAME takes a timm registry name (dwf_core.intake.timm_source.TIMM_NAME_PATTERN, checked equal in the tests):
# the API refuses a malformed one at once, the worker's validation checks that timm knows it.
TIMM_PREFIX = "timm:"
TIMM_NAME_PATTERN = r"[a-z0-9_]{1,100}"
MAX_SHIFT = 16  # dwf_core.augment.MAX_SHIFT


def check_augment(spec: str) -> None:
    """dwf_core.augment.parse_augment's grammar without torch (the tests check both accept the same settings).

    Raises:
        ValueError: what is wrong with ``spec``.
    """
    seen: set[str] = set()
    for raw in spec.split(","):
        part = raw.strip().lower()
        name, _, arg = part.partition(":")
        if name in seen:
            raise ValueError(f"{name!r} is given twice")
        seen.add(name)
        if name == "shift":
            if arg and not (re.fullmatch(r"[0-9]{1,3}", arg) and 1 <= int(arg) <= MAX_SHIFT):
                raise ValueError(f"shift takes a whole number of pixels in 1..{MAX_SHIFT} (shift:2), got {part!r}")
        elif name != "flip" or arg:
            raise ValueError(f"unknown transform {part!r}; use shift, shift:N, flip or a comma-separated list")


class Strict(BaseModel):
    """Unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class ModelRef(Strict):
    """Either an uploaded ONNX file or a zoo/torchvision/timm architecture name."""

    file_id: str | None = Field(
        default=None, description="An uploaded file with purpose 'model' (ONNX, or a transformers config.json)"
    )
    name: str | None = Field(
        default=None,
        max_length=200,
        description="lenet_300_100, lenet5, vgg16, torchvision:NAME, timm:NAME (a timm.list_models() name; "
        "random weights, never pretrained)…",
    )
    num_classes: int | None = Field(default=None, ge=1, le=100_000)

    @field_validator("name")
    @classmethod
    def _timm_name(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(TIMM_PREFIX):
            arch = value.removeprefix(TIMM_PREFIX)
            if not re.fullmatch(TIMM_NAME_PATTERN, arch):
                tag = arch.partition(".")[2]
                hint = f"drop the pretrained tag '.{tag}' (weights are never downloaded); " if tag else ""
                raise ValueError(
                    f"{value!r} is not a timm model name: {hint}timm:NAME takes a name from timm.list_models() "
                    "(lowercase letters, digits and '_'), e.g. timm:resnet18"
                )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelRef:
        if (self.file_id is None) == (self.name is None):
            raise ValueError("give exactly one of model.file_id or model.name")
        return self


class DatasetRef(Strict):
    """An uploaded dataset file and how to split/normalize it."""

    file_id: str
    val_fraction: float = Field(default=0.1, gt=0, le=0.5)
    normalize: Literal["auto", "none", "standardize"] = "auto"


# "dwf", or a baseline trained by the same trainer at depth 1 (dwf_core.baselines); all but "dense" prune to
# target_sparsity. api/ never imports dwf_core (it would pull torch in), so the names are repeated here and
# tests/api check them against dwf_core.baselines.METHODS.
MethodName = Literal["dwf", "dense", "magnitude", "magnitude-ft", "gmp", "snip", "synflow", "random"]
PRUNING_BASELINES = ("magnitude", "magnitude-ft", "gmp", "snip", "synflow", "random")


class DwfMethod(Strict):
    """The DWF settings (or a baseline's); ``None`` means dwf_core's measured default."""

    type: MethodName = "dwf"
    # None: 3, or 4 for a target sparsity ≥ 0.995 (dwf_core.defaults.depth_for_target).
    depth: int | None = Field(default=None, ge=1, le=MAX_DEPTH)
    lam: float | None = Field(default=None, ge=0, le=1)
    # Instead of lam: the sparsity to reach (λ from the measured map, lowered by a restart if training over-prunes;
    # the collapse cuts at this quantile).
    target_sparsity: float | None = Field(default=None, gt=0, lt=1)
    epochs: int = Field(default=40, ge=1, le=MAX_EPOCHS)
    lr: float | None = Field(default=None, gt=0, le=10)
    # Try the first steps at lr (or the default) and safer settings (clip, lr ÷ 3 …) and train with the largest that
    # learns as well as the best (dwf_core.lr_probe). None: on when lr is not given.
    lr_probe: bool | None = None
    batch_size: int = Field(default=128, ge=1, le=MAX_BATCH_SIZE)
    # Processes that train the job with DistributedDataParallel on its worker: that many GPUs (the job fails with
    # device_unavailable on a worker with fewer), or CPU processes. batch_size stays the global batch.
    devices: int = Field(default=1, ge=1, le=MAX_DEVICES)
    # None: SGD, or Adam where the LR probe finds that no SGD setting learns and Adam does (dwf_core.lr_probe).
    optimizer: Literal["sgd", "adam"] | None = None
    momentum: float = Field(default=0.9, ge=0, lt=1)
    init: Literal["varmatch", "balanced"] | None = None
    threshold: Literal["auto"] | float = "auto"
    tolerance: float = Field(default=0.001, ge=0, le=1)
    warmup_epochs: float = Field(default=0.0, ge=0)
    max_grad_norm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    include: list[str] | None = Field(default=None, max_length=100)
    exclude: list[str] | None = Field(default=None, max_length=100)
    # Compression ratios (> 1) at which the trained model is also cut and saved: several sparse models from
    # one job along the accuracy–CR curve, as frontier-crN.sparse.safetensors artifacts and metrics["frontier"].
    frontier: list[Annotated[float, Field(gt=1, allow_inf_nan=False)]] | None = Field(default=None, max_length=32)
    # Masked fine-tuning epochs after the cut: DWF None = only when a target cut cost > 0.5 pp, 0 = never;
    # magnitude-ft None = 10% of epochs. DWF keeps the fine-tuned model unless it lowered validation accuracy by
    # more than 0.5 pp (metrics["finetune"]["kept"]).
    finetune_epochs: int | None = Field(default=None, ge=0, le=MAX_EPOCHS)
    # DWF: epochs of plain (dense) training first; DWF then starts from those weights (dwf_core TrainConfig).
    dense_epochs: int = Field(default=0, ge=0, le=MAX_EPOCHS)
    # DWF from a trained model (dense_epochs, or uploaded weights that predict the data): weight α of distillation
    # from it; 0: off; None (unset): 0.5 from uploaded weights that predict the data, off otherwise (dwf_core
    # TrainConfig.distill, dwf_core.distill.automatic_alpha).
    distill: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    distill_temperature: float = Field(default=DEFAULT_TEMPERATURE, gt=0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    # "constant" (α throughout) or "linear" (α decays to 0 over the DWF steps).
    distill_schedule: Literal["constant", "linear"] = "constant"
    # DWF: "weights" (every weight factorized), "units" (D-Gating: gates per Linear neuron / conv channel remove whole
    # units) or "both" (dwf_core.structured; dwf_core TrainConfig.structure).
    structure: Literal["weights", "units", "both"] = "weights"
    # DWF with target_sparsity: "gradual" (weights beyond the target are masked during training) or "final" (only the
    # cut after training); None: gradual (dwf_core TrainConfig.cut).
    cut: Literal["gradual", "final"] | None = None
    # units/both with target_macs: "gradual" (whole units masked during training on a schedule of kept MACs) or
    # "final" (λ follows the MACs, the collapse cuts); None: dwf_core's default (dwf_core TrainConfig.unit_cut).
    unit_cut: Literal["gradual", "final"] | None = None
    # units/both with target_macs: the budget's cut keeps each layer's units a multiple of this (dwf_core TrainConfig
    # .unit_multiple); None: any count.
    unit_multiple: int | None = Field(default=None, ge=1, le=MAX_UNIT_MULTIPLE)
    # units/both: the fraction of the dense model's Linear/Conv MACs the collapsed model may keep.
    target_macs: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    # units/both: MAC fractions at which the trained model is also cut and evaluated (metrics structured.mac_frontier);
    # None: dwf_core's default budgets, []: none.
    mac_frontier: list[Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]] | None = Field(
        default=None, max_length=32
    )
    # Random transforms of every training batch, image inputs only (dwf_core.augment): "shift", "shift:N", "flip" or
    # a comma-separated list; None: the data as given.
    augment: str | None = Field(default=None, max_length=64, examples=["shift:2", "shift:4,flip"])
    # Training arithmetic on the worker (dwf_core.precision): "auto" (bf16 autocast on a GPU, float32 on a CPU),
    # "fp32", or "bf16" (autocast; the job fails before training on a device without it).
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @field_validator("augment")
    @classmethod
    def _augment(cls, value: str | None) -> str | None:
        if value is not None:
            check_augment(value)
        return value

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: Literal["auto"] | float) -> Literal["auto"] | float:
        if value != "auto" and (not math.isfinite(float(value)) or float(value) < 0):
            raise ValueError("must be 'auto' or a finite number ≥ 0")
        return value

    @field_validator("target_sparsity")
    @classmethod
    def _target(cls, value: float | None, info: ValidationInfo) -> float | None:
        # lam is declared before target_sparsity, so it is already in info.data when it was valid.
        if value is not None and info.data.get("lam") is not None:
            raise ValueError("give lam or target_sparsity, not both (the target sets λ itself)")
        return value

    @model_validator(mode="after")
    def _baseline_needs_target(self) -> DwfMethod:
        if self.type in PRUNING_BASELINES and self.target_sparsity is None:
            raise ValueError(f"method type {self.type!r} needs target_sparsity (the fraction to prune)")
        if self.dense_epochs and self.type != "dwf":
            raise ValueError("dense_epochs applies to method type 'dwf' only")
        if self.distill and self.type != "dwf":
            raise ValueError("distill applies to method type 'dwf' only")
        structured = self.structure != "weights"
        if structured and self.type != "dwf":
            raise ValueError(f"structure {self.structure!r} applies to method type 'dwf' only")
        if not structured and (self.target_macs is not None or self.mac_frontier):
            raise ValueError("target_macs and mac_frontier need structure 'units' or 'both'")
        if self.structure == "units" and self.target_sparsity is not None:
            raise ValueError("structure 'units' takes target_macs, not target_sparsity")
        if structured and self.frontier:
            raise ValueError("a structured run cuts at MAC budgets: use mac_frontier instead of frontier")
        if structured and self.depth is not None and self.depth < 2:
            raise ValueError("structure 'units'/'both' needs depth ≥ 2")
        if self.cut is not None and (self.type != "dwf" or self.target_sparsity is None or self.structure == "units"):
            raise ValueError("cut applies to method type 'dwf' with target_sparsity and structure 'weights' or 'both'")
        if self.unit_cut is not None and self.target_macs is None:
            raise ValueError("unit_cut needs target_macs (the MAC budget the units are cut to)")
        if self.unit_multiple is not None and self.target_macs is None:
            raise ValueError("unit_multiple needs target_macs (the MAC budget whose cut rounds the units)")
        return self


class WebhookIn(Strict):
    """A webhook: the URL called on every status change of a job, and the secret its calls are signed with."""

    url: str = Field(max_length=2048, description="http(s) URL; it gets a signed POST on every status change")
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=128,
        description="HMAC-SHA256 key of the X-Dwf-Signature header; omitted: the server generates one and returns it "
        "once, in this response only",
    )

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        return check_url(value, allow_private=True)  # the address check depends on the server: done by the route

    @field_validator("secret")
    @classmethod
    def _secret_chars(cls, value: str | None) -> str | None:
        return None if value is None else check_secret(value)


class WebhookOut(BaseModel):
    """A webhook as answered: its URL, and its secret only in the answer that generated it."""

    url: str
    secret: str | None = None


class JobCreate(Strict):
    """POST /v1/jobs."""

    model: ModelRef
    weights_file_id: str | None = None
    dataset: DatasetRef
    method: DwfMethod
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    # Called on every status change of this job instead of the tenant's webhook (PUT /v1/webhook).
    webhook: WebhookIn | None = None


# A job id as new_id makes it: "job-" and 26 Crockford base32 characters.
JOB_ID_PATTERN = r"^job-[0-9a-hjkmnp-tv-z]{26}$"


class JobSubmit(Strict):
    """The body POST /v1/jobs takes: a JobCreate, or with ``from_job`` the continuation of a finished DWF job.

    The fields mirror JobCreate's (tests/api check that they stay the same), but model and dataset may be omitted
    with ``from_job``: the child takes its parent's (api/from_job.py has the rules).
    """

    # First: the validators of model and dataset read it.
    from_job: str | None = Field(
        default=None,
        pattern=JOB_ID_PATTERN,
        description="A succeeded DWF job of yours: this job starts from its trained factors and trains on to a "
        "higher method.target_sparsity; model, dataset and the method settings you omit are the parent's",
    )
    model: ModelRef | None = Field(default=None, validate_default=True)
    weights_file_id: str | None = None
    dataset: DatasetRef | None = Field(default=None, validate_default=True)
    method: DwfMethod
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    webhook: WebhookIn | None = None

    @field_validator("model", "dataset")
    @classmethod
    def _given_without_parent(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.data.get("from_job") is None:
            raise ValueError(f"{info.field_name} is required (unless from_job names a job to continue)")
        return value

    def as_job(self) -> JobCreate:
        """The JobCreate of a body without ``from_job`` (its fields as set)."""
        return JobCreate.model_validate(self.model_dump(exclude_unset=True, exclude={"from_job"}))


class FileOut(BaseModel):
    """An uploaded file."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    sha256: str
    filename: str
    purpose: str
    format: str
    created_at: str


class JobError(BaseModel):
    """Why a job failed."""

    code: str | None
    message: str | None
    param: str | None


class Progress(BaseModel):
    """Where training stands."""

    epoch: int | None
    epochs: int | None
    fraction: float | None
    eta_seconds: float | None


class JobOut(BaseModel):
    """A job, the same shape from POST, GET and cancel."""

    id: str
    object: Literal["job"] = "job"
    status: str
    phase: str | None
    model: dict[str, Any]
    weights_file_id: str | None
    dataset: dict[str, Any]
    method: dict[str, Any]
    seed: int
    metadata: dict[str, str] | None
    progress: Progress
    metrics: dict[str, Any] | None
    error: JobError | None
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    # The sweep this job is a child of (POST /v1/sweeps), or None.
    sweep_id: str | None = None
    # The finished job this one continues (POST /v1/jobs with from_job), or None.
    parent_job_id: str | None = None
    # The job's own webhook (its secret only in the POST answer that generated it), or None.
    webhook: WebhookOut | None = None
    urls: dict[str, str]


class EventOut(BaseModel):
    """One job event."""

    id: str
    object: Literal["job.event"] = "job.event"
    created_at: str
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


class ArtifactOut(BaseModel):
    """One downloadable output of a job."""

    name: str
    bytes: int
    sha256: str
    url: str


class FileList(BaseModel):
    """A page of files."""

    object: Literal["list"] = "list"
    data: list[FileOut]
    has_more: bool


class JobList(BaseModel):
    """A page of jobs, newest first."""

    object: Literal["list"] = "list"
    data: list[JobOut]
    has_more: bool
    first_id: str | None
    last_id: str | None


class EventList(BaseModel):
    """A page of events, oldest first."""

    object: Literal["list"] = "list"
    data: list[EventOut]
    has_more: bool


class ArtifactList(BaseModel):
    """A job's artifacts."""

    object: Literal["list"] = "list"
    data: list[ArtifactOut]


class Deleted(BaseModel):
    """Answer of a DELETE."""

    id: str
    object: str
    deleted: bool
