"""Bodies of /v1/sweeps: a job request plus a grid of method values; the sweep as the API shows it."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, model_validator

from api.schemas import MAX_DEPTH, DatasetRef, MethodName, ModelRef, Strict

# One grid axis: 1 to 32 distinct values (the product is bounded by DWF_SWEEP_MAX_CHILDREN).
AXIS = 32
T = TypeVar("T")
Axis = Annotated[list[T] | None, Field(min_length=1, max_length=AXIS)]


class SweepGrid(Strict):
    """The method values to sweep: the children are every combination (the cartesian product)."""

    type: Axis[MethodName] = None
    depth: Axis[Annotated[int, Field(ge=1, le=MAX_DEPTH)]] = None
    lam: Axis[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = None
    target_sparsity: Axis[Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]] = None
    target_macs: Axis[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]] = None

    @model_validator(mode="after")
    def _distinct_and_present(self) -> SweepGrid:
        axes = {name: values for name, values in self.model_dump(exclude_none=True).items()}
        if not axes:
            raise ValueError("give at least one grid axis: type, depth, lam, target_sparsity or target_macs")
        for name, values in axes.items():
            if len(set(values)) != len(values):
                raise ValueError(f"grid.{name} repeats a value")
        return self


class SweepCreate(Strict):
    """POST /v1/sweeps: the fields of POST /v1/jobs (the base of every child) and the grid."""

    model: ModelRef
    weights_file_id: str | None = None
    dataset: DatasetRef
    # The settings every child shares; each grid point overrides its fields (validated per child like a job's).
    method: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    grid: SweepGrid


class SweepChild(BaseModel):
    """One child job of a sweep: its grid point, status and headline metrics."""

    job_id: str
    point: dict[str, Any]
    status: str
    epoch: int | None
    epochs: int | None
    test_accuracy: float | None
    sparsity: float | None
    compression_ratio: float | None
    mac_fraction: float | None
    error_code: str | None
    url: str


class SweepOut(BaseModel):
    """A sweep: the same shape from POST, GET and cancel."""

    id: str
    object: Literal["sweep"] = "sweep"
    status: str
    model: dict[str, Any]
    weights_file_id: str | None
    dataset: dict[str, Any]
    method: dict[str, Any]
    seed: int
    metadata: dict[str, str] | None
    grid: dict[str, list[Any]]
    counts: dict[str, int]
    children: list[SweepChild]
    cancel_requested: bool
    created_at: str
    finished_at: str | None
    urls: dict[str, str]


class SweepList(BaseModel):
    """A page of sweeps, newest first."""

    object: Literal["list"] = "list"
    data: list[SweepOut]
    has_more: bool
    first_id: str | None
    last_id: str | None
