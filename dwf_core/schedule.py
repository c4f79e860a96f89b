"""Learning-rate schedule as a pure function of the step, so a checkpoint only needs the step count."""

from __future__ import annotations

import math
from typing import Literal

ScheduleName = Literal["cosine", "constant"]


def lr_at(
    step: int,
    total_steps: int,
    base_lr: float,
    *,
    schedule: ScheduleName = "cosine",
    warmup_steps: int = 0,
    final_fraction: float = 0.0,
) -> float:
    """LR for optimizer step ``step`` (0-based): linear warmup, then cosine from base_lr to final_fraction·base_lr."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    floor = final_fraction * base_lr
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
