"""Continue a finished DWF run: a new run starts from the factors a run's checkpoint holds, toward a higher target.

A DWF run writes a checkpoint after every epoch (dwf_core.checkpoint); the latest one of a finished run holds the
factorized model after its last DWF epoch: the model it collapsed, before the collapse's cut at the target and before
any masked fine-tuning (neither writes a checkpoint). A continued run factorizes its model as usual, then loads those
``model/*`` tensors over the fresh init (``apply_start_state``: same names, same shapes, or a clear error); the
optimizer, the LR schedule, λ (calibrated for the new target) and the gradual cut's masks start fresh. Weights the
source run's gradual cut masked have every factor at exactly zero, so every factor's gradient is zero too: they stay
dead, which a higher target only needs (after a ``cut="final"`` or a λ run they are small, not zero, and may revive).

Only the model's tensors are read, from safetensors (never pickle); the checkpoint's optimizer and RNG state are not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwf_core.checkpoint import load_checkpoint
from dwf_core.config import TrainConfig
from dwf_core.errors import ConfigError, TrainingError
from dwf_core.state_dict import load_tensors

MODEL_PREFIX = "model/"
# How many mismatched names an error lists before "and N more".
_LISTED = 5


@dataclass(frozen=True)
class StartState:
    """The trained factorized model of a finished DWF run, and what that run was."""

    tensors: dict[str, torch.Tensor]
    epoch: int
    config: TrainConfig
    # The monitored sparsity and validation accuracy of the source's last epoch (None when its history is empty).
    sparsity: float | None
    val_accuracy: float | None

    @property
    def reached(self) -> float | None:
        """The sparsity the source run aimed at: its target, else what its last epoch reached."""
        return self.config.target_sparsity if self.config.target_sparsity is not None else self.sparsity

    def describe(self) -> dict[str, Any]:
        """For metrics.json ``continued_from``: where the run started."""
        return {
            "epoch": self.epoch,
            "depth": self.config.effective_depth,
            "target_sparsity": self.config.target_sparsity,
            "lam": self.config.lam,
            "sparsity": self.sparsity,
            "val_accuracy": self.val_accuracy,
        }


def load_start_state(directory: str | os.PathLike[str]) -> StartState:
    """Read the latest checkpoint of a finished DWF run from ``directory`` (a run's ``checkpoints`` folder).

    Raises:
        ConfigError: ``start_state_missing`` when there is none; ``start_state_incompatible`` when it is not DWF's
            or the run stopped before its last epoch.
        TrainingError: ``corrupt_checkpoint`` when the files are damaged (dwf_core.checkpoint).
    """
    ckpt = load_checkpoint(directory)
    if ckpt is None:
        raise ConfigError(f"no checkpoint in {directory} to continue from", code="start_state_missing",
                          param="start_state")  # fmt: skip
    state = ckpt.state
    try:
        config = TrainConfig.from_dict(state["config"])
        epoch = int(state["epoch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(f"checkpoint in {directory} has no readable settings: {exc}",
                            code="corrupt_checkpoint") from exc  # fmt: skip
    if config.method != "dwf":
        raise ConfigError(
            f"the checkpoint in {directory} is of a {config.method!r} run; only DWF runs carry factors to continue",
            code="start_state_incompatible",
            param="start_state",
        )
    if epoch < config.epochs:
        raise ConfigError(
            f"the checkpoint in {directory} ends epoch {epoch} of {config.epochs}: that run did not finish its DWF "
            "training, so it holds no final state to continue from",
            code="start_state_incompatible",
            param="start_state",
        )
    history = state.get("history") or []
    last = history[-1] if history else {}
    tensors = {k[len(MODEL_PREFIX) :]: v for k, v in ckpt.tensors.items() if k.startswith(MODEL_PREFIX)}
    if not tensors:
        raise TrainingError(f"checkpoint in {directory} holds no model tensors", code="corrupt_checkpoint")
    return StartState(
        tensors=tensors,
        epoch=epoch,
        config=config,
        sparsity=_float_or_none(last.get("sparsity")),
        val_accuracy=_float_or_none(last.get("val_accuracy")),
    )


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def continued_config(cfg: TrainConfig, start: StartState) -> TrainConfig:
    """``cfg`` with what shapes the factorized model taken from the source where left unset (depth, include,
    exclude), checked against it.

    Raises:
        ConfigError: ``start_state_incompatible`` naming the setting: not DWF, a dense phase, another depth,
            structure or parameter selection, no target sparsity or one not above the source's.
    """
    source = start.config

    def incompatible(message: str, param: str) -> ConfigError:
        return ConfigError(message, code="start_state_incompatible", param=param)

    if cfg.method != "dwf":
        raise incompatible(f"a continued run is a DWF run; got method {cfg.method!r}", "method")
    if cfg.dense_epochs:
        raise incompatible("a continued run starts from trained factors: dense_epochs must be 0", "dense_epochs")
    merged = replace(
        cfg,
        depth=source.effective_depth if cfg.depth is None else cfg.depth,
        include=source.include if cfg.include is None else cfg.include,
        exclude=source.exclude if cfg.exclude is None else cfg.exclude,
    )
    for name in ("depth", "structure", "include", "exclude"):
        mine, theirs = getattr(merged, name), getattr(source, name)
        if name == "depth":
            theirs = source.effective_depth
        if mine != theirs:
            raise incompatible(f"{name} must be the source run's ({theirs!r}) to load its factors; got {mine!r}", name)
    if merged.target_sparsity is None:
        raise incompatible("a continued run needs a target sparsity (higher than the source run's)", "target_sparsity")
    reached = start.reached
    if reached is not None and merged.target_sparsity <= reached:
        raise incompatible(
            f"target sparsity {merged.target_sparsity:g} is not above the source run's {reached:g}: weights it "
            "pruned stay dead, so a continued run can only go further",
            "target_sparsity",
        )
    return merged


def apply_start_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into the (already factorized) ``model`` in place: every name and shape must match.

    Raises:
        TrainingError: ``start_state_mismatch`` listing the first missing, unexpected or differently shaped names.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(
        f"{name} {tuple(tensors[name].shape)} vs {tuple(expected[name].shape)}"
        for name in set(expected) & set(tensors)
        if tensors[name].shape != expected[name].shape
    )
    problems = [(what, names) for what, names in (("missing", missing), ("unexpected", unexpected),
                                                   ("shape", shapes)) if names]  # fmt: skip
    if problems:
        parts = []
        for what, names in problems:
            more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
            parts.append(f"{what}: {', '.join(names[:_LISTED])}{more}")
        raise TrainingError(
            "the saved state does not fit the factorized model (another architecture, depth or parameter "
            f"selection?): {'; '.join(parts)}",
            code="start_state_mismatch",
            param="start_state",
        )
    with torch.no_grad():
        load_tensors(model, tensors)


def start_state_path(run_dir: Path) -> Path:
    """The checkpoint folder of a local ``dwf train`` run folder (``--from-run``)."""
    return run_dir / "checkpoints"
