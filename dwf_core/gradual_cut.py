"""DWF's gradual cut: reach the target sparsity during training instead of in one cut after it.

Without it, a DWF job with a target trains with λ steering toward the target and then zeroes the smallest
collapsed weights up to the target in one cut: where λ had not already driven those weights to zero, the cut
removes weights the network still used, and masked fine-tuning has to win the accuracy back (MLP-Mixer at 99%:
57% after the cut). The gradual cut masks the smallest collapsed weights |ω1⊙…⊙ωD| on GMP's cubic schedule
(dwf_core.masking; from 10% to 75% of the DWF steps, about 50 events): every masked entry has all its factors
at exact zero, stays masked, and the remaining weights train around the holes while λ keeps shrinking the
rest. At the end the mask holds exactly the target, so the collapse cuts nothing the network still uses.
docs/defaults.md ("The gradual cut") gives the model-suite runs behind the default.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dwf_core.factorize import factorized_tensors
from dwf_core.masking import (
    GrowingMasks,
    apply_masks,
    cubic_sparsity,
    grow_masks,
    mask_sparsity,
    pruning_due,
    pruning_window,
)

START = 0.10
END = 0.75
EVENTS = 50


def collapsed_magnitudes(model: nn.Module) -> dict[str, torch.Tensor]:
    """|ω1⊙…⊙ωD| of every factorized tensor, by name, in float64 (products of small factors underflow float32)."""
    scores = {}
    with torch.no_grad():
        for t in factorized_tensors(model):
            product = torch.ones_like(t.factors()[0], dtype=torch.float64)
            for factor in t.factors():
                product = product * factor.detach().double()
            scores[t.name] = product.abs()
    return scores


class GradualCut(GrowingMasks):
    """Masks that grow from 0 to ``target`` on the cubic schedule over a run of ``total_steps`` optimizer steps."""

    checkpoint_prefix = "cut/"

    def __init__(self, model: nn.Module, target: float, total_steps: int) -> None:
        super().__init__(model)
        self.target = target
        self.window = pruning_window(total_steps, START, END, EVENTS)

    def after_step(self, steps_done: int) -> None:
        """Grow the masks when a pruning step is due, then zero every masked entry's factors."""
        if pruning_due(steps_done, self.window):
            start, end, _ = self.window
            sparsity = cubic_sparsity(steps_done, self.target, start, end)
            self.masks = grow_masks(collapsed_magnitudes(self.model), self.masks, sparsity)
            self.events += 1
        if self.masks:
            apply_masks(self.model, self.masks)

    def describe(self) -> dict[str, Any]:
        """For metrics.json: the schedule and where it stands."""
        start, end, interval = self.window
        return {
            "mode": "gradual",
            "target": self.target,
            "start_step": start,
            "end_step": end,
            "interval": interval,
            "events": self.events,
            "mask_sparsity": mask_sparsity(self.masks),
        }
