"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

Sparsity follows s_t = s_f·(1 − (1 − (t − t0)/(t1 − t0))³) from step t0 (10% of training) to t1 (75%); every
``interval`` steps in between, and at t1, the smallest-magnitude surviving weights (globally over the target
tensors) are masked up to s_t. Pruned weights never come back; the final mask holds s_f to the end.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dwf_core.baselines.masks import MaskedTrainer, global_topk_mask, weights_of

START = 0.10
END = 0.75
PRUNE_EVENTS = 50  # pruning steps between START and END (Zhu & Gupta prune every ~100–1000 steps)


def gmp_sparsity(step: int, final: float, start_step: int, end_step: int, initial: float = 0.0) -> float:
    """The cubic schedule: ``initial`` before ``start_step``, ``final`` from ``end_step`` on."""
    if step <= start_step:
        return initial
    if step >= end_step:
        return final
    progress = (step - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - progress) ** 3


def gmp_window(total_steps: int) -> tuple[int, int, int]:
    """(t0, t1, interval) for a run of ``total_steps`` optimizer steps; t0 < t1 ≤ total_steps."""
    start = math.floor(START * total_steps)
    end = min(total_steps, max(start + 1, math.ceil(END * total_steps)))
    interval = max(1, (end - start) // PRUNE_EVENTS)
    return start, end, interval


class GMPTrainer(MaskedTrainer):
    """Dense training that prunes on the cubic schedule; ``schedule`` records (step, sparsity) of each event."""

    def __init__(self, *args: Any, final_sparsity: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.final_sparsity = final_sparsity
        self.schedule: list[tuple[int, float]] = []

    def _prepare(self) -> None:
        super()._prepare()
        self.window = gmp_window(self.total_steps)

    def after_step(self, steps_done: int) -> None:
        """Prune at the scheduled steps, then re-apply the masks."""
        start, end, interval = self.window
        due = start < steps_done <= end and ((steps_done - start) % interval == 0 or steps_done == end)
        if due:
            target = gmp_sparsity(steps_done, self.final_sparsity, start, end)
            with torch.no_grad():
                scores = {}
                for name, w in weights_of(self.model).items():
                    score = w.detach().abs().double()
                    mask = self.masks.get(name)
                    # Already pruned weights score −1: they stay pruned (the schedule only grows).
                    scores[name] = score if mask is None else score.masked_fill(~mask, -1.0)
            self.masks = global_topk_mask(scores, target)
            self.schedule.append((steps_done, target))
        super().after_step(steps_done)
