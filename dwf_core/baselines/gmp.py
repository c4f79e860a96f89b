"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

Sparsity follows s_t = s_f·(1 − (1 − (t − t0)/(t1 − t0))³) from step t0 (10% of training) to t1 (75%); every
``interval`` steps in between, and at t1, the smallest-magnitude surviving weights (globally over the target
tensors) are masked up to s_t. Pruned weights never come back; the final mask holds s_f to the end.
"""

from __future__ import annotations

from typing import Any

import torch

from dwf_core.baselines.masks import MaskedTrainer, weights_of
from dwf_core.masking import cubic_sparsity, grow_masks, pruning_due, pruning_window

START = 0.10
END = 0.75
PRUNE_EVENTS = 50  # pruning steps between START and END (Zhu & Gupta prune every ~100–1000 steps)


def gmp_sparsity(step: int, final: float, start_step: int, end_step: int, initial: float = 0.0) -> float:
    """The cubic schedule: ``initial`` before ``start_step``, ``final`` from ``end_step`` on."""
    return cubic_sparsity(step, final, start_step, end_step, initial)


def gmp_window(total_steps: int) -> tuple[int, int, int]:
    """(t0, t1, interval) for a run of ``total_steps`` optimizer steps; t0 < t1 ≤ total_steps."""
    return pruning_window(total_steps, START, END, PRUNE_EVENTS)


class GMPTrainer(MaskedTrainer):
    """Dense training that prunes on the cubic schedule; ``schedule`` records (step, sparsity) of each event."""

    def __init__(self, *args: Any, final_sparsity: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.final_sparsity = final_sparsity
        self.schedule: list[tuple[int, float]] = []

    def _prepare(self) -> None:
        super()._prepare()
        self.window = gmp_window(self.total_steps)

    def _restart(self) -> None:
        super()._restart()
        self.schedule = []

    def after_step(self, steps_done: int) -> None:
        """Prune at the scheduled steps, then re-apply the masks."""
        if pruning_due(steps_done, self.window):
            start, end, _ = self.window
            target = gmp_sparsity(steps_done, self.final_sparsity, start, end)
            with torch.no_grad():
                scores = {name: w.detach().abs().double() for name, w in weights_of(self.model).items()}
            self.masks = grow_masks(scores, self.masks, target)
            self.schedule.append((steps_done, target))
        super().after_step(steps_done)
