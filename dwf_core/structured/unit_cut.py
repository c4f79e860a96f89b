"""Structured DWF's gradual unit cut: reach the MAC budget during training instead of in one cut after it.

Without it a run with ``target_macs`` relies on λ alone to shrink whole units, and where λ also drives a target
sparsity (structure "both" with ``target_sparsity``) nothing presses on the units at all: on LeNet-300-100 at 99%
sparsity the final cut to 10% of the MACs then dropped validation accuracy to 34% (fine-tuned back to 95.9%,
benchmarks/results/structured/README.md). The gradual unit cut masks whole units on GMP's cubic schedule of kept
MACs (from 1 to ``target_macs`` between ``START`` and ``END`` of the training steps, about ``EVENTS`` events): at each
event the model is collapsed (factors multiplied, gates folded), the units are ranked as the final cut ranks them
(``UnitCutter``: those below ε, then by size relative to their layer's RMS) and the fewest are removed for the MACs
to fit the scheduled fraction; a removed unit's D−1 gates are held at exact zero from then on (its output is zero,
its gradients are zero), so the remaining units train around the holes and the final cut removes nothing the
network still uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dwf_core.masking import GrowingMasks, cubic_sparsity, pruning_due, pruning_window
from dwf_core.structured.cut import UnitCutter, plain_copy
from dwf_core.structured.gates import GATES_ATTR
from dwf_core.structured.macs import probe_input

START = 0.10
END = 0.60
EVENTS = 30


class GradualUnitCut(GrowingMasks):
    """Unit masks that grow so that the kept MACs fall from all to ``target_macs`` over ``total_steps`` steps.

    Its masks map a gated module's name to a bool per unit, True where the unit is removed.
    """

    checkpoint_prefix = "unit_cut/"

    def __init__(
        self, model: nn.Module, target_macs: float, total_steps: int, example: torch.Tensor, multiple: int = 1
    ) -> None:
        super().__init__(model)
        self.target = target_macs
        # Units kept per layer rounded down to it (UnitCutter) once the schedule reaches the budget, not before:
        # rounding at every event compounded (each event that cut a layer took a whole block from it) and ended
        # LeNet-300-100 at 8.3% of the MACs for a 10% budget, 0.4-0.5 pp below the unrounded runs.
        self.multiple = multiple
        self.window = pruning_window(total_steps, START, END, EVENTS)
        self.probe = probe_input(example.detach().cpu())
        self.mac_fraction = 1.0

    def scheduled(self, steps_done: int) -> float:
        """The MAC fraction the cut holds the model to after ``steps_done`` steps."""
        start, end, _ = self.window
        return 1.0 - cubic_sparsity(steps_done, 1.0 - self.target, start, end)

    def after_step(self, steps_done: int) -> None:
        """Grow the masks when an event is due, then hold every removed unit's gates at zero."""
        if pruning_due(steps_done, self.window):
            self._grow(self.scheduled(steps_done))
            self.events += 1
        if self.masks:
            self.apply()

    def _grow(self, goal: float) -> None:
        was_training = self.model.training
        plain, layers = plain_copy(self.model)
        self.model.train(was_training)
        multiple = self.multiple if goal <= self.target + 1e-9 else 1
        cutter = UnitCutter(plain, layers, self.probe.to(next(plain.parameters()).device), multiple)
        self.mac_fraction = cutter.cut_to(goal).fraction
        # The natural units (below ε: every masked unit is, its gates being zero), the budget's cut and its rounding:
        # the masks only grow.
        for unit in cutter.removed_units():
            mask = self.masks.get(unit.layer)
            if mask is None:
                gates = getattr(self.model.get_submodule(unit.layer), GATES_ATTR)
                mask = self.masks[unit.layer] = torch.zeros(gates.shape[1], dtype=torch.bool, device=gates.device)
            mask[unit.index] = True

    def apply(self) -> None:
        """Zero the gates of every removed unit (all D−1 of them: the product's gradient stays zero too)."""
        with torch.no_grad():
            for name, mask in self.masks.items():
                getattr(self.model.get_submodule(name), GATES_ATTR)[:, mask] = 0.0

    def reset(self) -> None:
        """Training starts over: no unit removed yet."""
        super().reset()
        self.mac_fraction = 1.0

    def units_removed(self) -> int:
        """Units masked so far."""
        return sum(int(mask.sum()) for mask in self.masks.values())

    def describe(self) -> dict[str, Any]:
        """For metrics.json: the schedule and where it stands."""
        start, end, interval = self.window
        return {
            "mode": "gradual",
            "target_macs": self.target,
            "unit_multiple": self.multiple,
            "start_step": start,
            "end_step": end,
            "interval": interval,
            "events": self.events,
            "units_removed": self.units_removed(),
            "mac_fraction": self.mac_fraction,
        }
