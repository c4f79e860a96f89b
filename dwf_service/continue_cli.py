"""``dwf submit --from-job JOB``: what a continued job's command line may hold, and the method settings it sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def continue_usage_error(
    from_job: str | None,
    model: str | None,
    data: str | None,
    target_sparsity: float | None,
    weights: Path | None,
    num_classes: int | None,
    val_fraction: float | None,
) -> str | None:
    """Why this ``dwf submit`` line cannot run, or None: a new job needs MODEL and DATA; a continued one takes its
    parent's (and its trained state instead of weights) and needs the new target."""
    if from_job is None:
        return None if model is not None and data is not None else "give MODEL and DATA (or --from-job JOB)"
    given = [name for name, value in (("MODEL", model), ("DATA", data), ("--weights", weights),
                                      ("--num-classes", num_classes), ("--val-fraction", val_fraction))
             if value is not None]  # fmt: skip
    if given:
        return f"--from-job continues the parent's model and dataset from its trained state: drop {', '.join(given)}"
    if target_sparsity is None:
        return "--from-job needs --target-sparsity S, above the parent's"
    return None


def continue_options(depth: int | None, lr: float | None, method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The method settings of a continued job given on the command line (the others are the parent's)."""
    chosen = {"depth": depth, "lr": lr, "type": None if method == "dwf" else method}
    return {**{k: v for k, v in chosen.items() if v is not None}, **options}
