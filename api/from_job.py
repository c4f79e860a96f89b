"""POST /v1/jobs with ``from_job``: which finished job a new job may continue, and the job request that results.

The rules (README "Continue a finished job"):
- the parent is one of the caller's jobs (another tenant's answers 404 like an unknown id), it succeeded (409
  ``parent_not_succeeded``) and it is a DWF job (422 ``from_job_incompatible``, param ``from_job``);
- the child takes the parent's model and dataset; given anyway, they must be equal (422 ``from_job_incompatible``
  naming ``model``/``dataset``); a weights file does not apply (the child starts from the parent's trained state);
- the method settings the body leaves out are the parent's, except λ, the target, dense_epochs and init; depth,
  structure, include and exclude shape the factors and must be the parent's (422 naming the field);
  ``method.target_sparsity`` is required and above the parent's target (its achieved sparsity when it had none);
- the parent's trained state must still be in the blob store: its final checkpoint (``jobs.checkpoint_key``, the
  epoch it ends equal to its epochs), kept DWF_CHECKPOINT_RETENTION_SECONDS after it ended, and for as long as
  an unfinished child needs it (dwf_service.blob_checkpoints.expire_checkpoints); else 409
  ``parent_state_unavailable``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError
from api.schemas import JobCreate, JobSubmit
from dwf_service import jobs
from dwf_service.models import Job, Tenant
from dwf_service.settings import Settings

# Method settings a child never takes from its parent: λ and the target are what changes, a dense phase would
# overwrite the trained factors, the init is replaced by them.
NOT_INHERITED = ("lam", "target_sparsity", "dense_epochs", "init")
# Settings that decide the factorized model's tensors: the parent's state loads only into the same ones.
SHAPING = ("depth", "structure", "include", "exclude")
_DEFAULT_SHAPING: dict[str, Any] = {"depth": None, "structure": "weights", "include": None, "exclude": None}


def _incompatible(message: str, param: str) -> ApiError:
    return ApiError(422, "from_job_incompatible", message, param=param)


def resolve(session: Session, settings: Settings, tenant: Tenant, body: JobSubmit) -> tuple[JobCreate, Job | None]:
    """The job request ``body`` stands for and its parent (None without ``from_job``).

    Raises:
        ApiError: 404, 409 or 422 by the rules above, with ``param`` naming the field.
    """
    if body.from_job is None:
        return body.as_job(), None
    parent = session.scalar(select(Job).where(Job.id == body.from_job, Job.tenant_id == tenant.id))
    if parent is None:
        raise ApiError(404, "job_not_found", f"no job {body.from_job!r}", param="from_job")
    if parent.status != jobs.SUCCEEDED:
        raise ApiError(409, "parent_not_succeeded",
                       f"job {parent.id} is {parent.status}: only a succeeded job can be continued",
                       param="from_job")  # fmt: skip
    request = parent.request
    parent_method: dict[str, Any] = request["method"]
    if parent_method.get("type", "dwf") != "dwf":
        raise _incompatible(f"job {parent.id} ran method {parent_method['type']!r}: only DWF jobs keep factors to "
                            "continue from", "from_job")  # fmt: skip
    if body.method.type != "dwf":
        raise _incompatible("a continued job is a DWF job: method.type must be 'dwf'", "method.type")
    if body.model is not None and body.model.model_dump(mode="json", exclude_none=True) != request["model"]:
        raise _incompatible(f"model must be job {parent.id}'s ({request['model']}) or omitted", "model")
    if body.dataset is not None and body.dataset.model_dump(mode="json", exclude_none=True) != request["dataset"]:
        raise _incompatible(f"dataset must be job {parent.id}'s ({request['dataset']}) or omitted", "dataset")
    if body.weights_file_id is not None:
        raise _incompatible("a continued job starts from its parent's trained state: drop weights_file_id",
                            "weights_file_id")  # fmt: skip
    method = _child_method(parent, body)
    _check_state(settings, parent)
    try:
        child = JobCreate.model_validate(
            {
                **body.model_dump(exclude_unset=True, exclude={"from_job", "model", "dataset", "method"}),
                "model": request["model"],
                "dataset": request["dataset"],
                "method": method,
            }
        )
    except ValidationError as exc:  # the parent's settings with the body's: a combination one of them cannot have
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _incompatible(f"the parent's method settings with yours are not a valid job: {first['msg']}",
                            where or "method") from None  # fmt: skip
    return child, parent


def _child_method(parent: Job, body: JobSubmit) -> dict[str, Any]:
    """The parent's method settings overlaid with those the body set, checked against the parent's factors."""
    parent_method: dict[str, Any] = parent.request["method"]
    mine = body.method.model_dump(mode="json", exclude_unset=True)
    # The depth the parent trained at (resolved by dwf_core: its request may have left it to the default).
    parent_config: dict[str, Any] = (parent.metrics or {}).get("config") or {}
    theirs = {name: parent_method.get(name, default) for name, default in _DEFAULT_SHAPING.items()}
    if parent_config.get("depth") is not None:
        theirs["depth"] = parent_config["depth"]
    for name in SHAPING:
        if name in mine and mine[name] != theirs[name]:
            raise _incompatible(
                f"method.{name} must be job {parent.id}'s ({theirs[name]!r}) to load its factors; got {mine[name]!r}",
                f"method.{name}",
            )
    if mine.get("dense_epochs"):
        raise _incompatible("a continued job starts from trained factors: method.dense_epochs must be 0",
                            "method.dense_epochs")  # fmt: skip
    target = mine.get("target_sparsity")
    if target is None:
        raise _incompatible("give method.target_sparsity: the new target, above the parent's",
                            "method.target_sparsity")  # fmt: skip
    reached = parent_method.get("target_sparsity")
    what = "target"
    if reached is None:
        reached, what = (parent.metrics or {}).get("sparsity"), "achieved sparsity"
    if reached is not None and target <= reached:
        raise _incompatible(
            f"method.target_sparsity {target:g} is not above job {parent.id}'s {what} {reached:g}: the weights it "
            "pruned stay dead, so a continued job can only go further",
            "method.target_sparsity",
        )
    inherited = {k: v for k, v in parent_method.items() if k not in NOT_INHERITED}
    return {**inherited, **mine, **{k: v for k, v in theirs.items() if v is not None}}


def _check_state(settings: Settings, parent: Job) -> None:
    """409 unless the parent's final checkpoint is still in the blob store."""
    retention = f"DWF_CHECKPOINT_RETENTION_SECONDS={settings.checkpoint_retention_seconds:g}"
    if parent.checkpoint_key is None:
        raise ApiError(
            409,
            "parent_state_unavailable",
            f"job {parent.id}'s trained state is no longer kept: checkpoints are removed {retention} seconds after "
            "a job ends; train it again (or raise the retention) to continue from it",
            param="from_job",
        )
    if parent.checkpoint_epoch != parent.epochs:
        raise ApiError(
            409,
            "parent_state_unavailable",
            f"job {parent.id}'s stored checkpoint ends epoch {parent.checkpoint_epoch} of {parent.epochs}, not its "
            "final state (its last upload failed); it cannot be continued",
            param="from_job",
        )


def stored_request(child: JobCreate, parent: Job) -> dict[str, Any]:
    """What the child's row keeps as its request: the resolved job and the parent it continues."""
    request = child.model_dump(mode="json", exclude_none=True, exclude={"webhook"})
    request["from_job"] = parent.id
    return request
