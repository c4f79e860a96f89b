"""λ control toward a MAC budget: after each epoch, measure the MACs the live units need and move λ.

The group penalty decides which units die early and hardly lets them come back, so a λ that is wrong for the
first epochs cannot be repaired by the final cut (which would then have to remove units that still matter). The
goal falls from all MACs to ``target_macs`` over the first ``RAMP`` of the epochs along GMP's cubic schedule; λ is
multiplied by ``STEP`` while the live units need more MACs than the goal and divided by it when they need clearly
fewer, within [λ₀/``SPAN``, λ₀·``SPAN``]. The rest of the epochs train the surviving units at the final λ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dwf_core.structured.cut import plain_copy, unit_sizes, unit_weight_count, zero_unit
from dwf_core.structured.macs import count_macs, probe_input

# A unit whose folded weights (row and bias) have an RMS below this counts as removed while training; the final
# collapse removes only those below float32 ε, then cuts to the budget.
MONITOR_RMS = 1e-3
RAMP = 0.5
STEP = 1.5
SPAN = 100.0
# Inside [goal·LOW_BAND, goal]: λ stays.
LOW_BAND = 0.8


def scheduled_macs(target: float, epoch: int, epochs: int, ramp: float = RAMP) -> float:
    """The MAC fraction to have after ``epoch`` (1-based): 1 − (1 − target)·(1 − (1 − t)³), t = epoch/(ramp·E)."""
    t = min(1.0, epoch / max(1.0, ramp * epochs))
    return 1.0 - (1.0 - target) * (1.0 - (1.0 - t) ** 3)


def live_mac_fraction(model: nn.Module, example: torch.Tensor) -> float:
    """MAC fraction of ``model`` (gated, maybe factorized) with units below ``MONITOR_RMS`` counted as removed."""
    plain, layers = plain_copy(model)
    for unit in unit_sizes(plain, layers):
        count = unit_weight_count(plain, unit.layer, unit.index)
        if unit.size < MONITOR_RMS * count**0.5:
            zero_unit(plain, unit.layer, unit.index, layers[unit.layer])
    return count_macs(plain, probe_input(example.cpu())).fraction


def next_lam(lam: float, fraction: float, goal: float, lam0: float) -> float:
    """λ for the next epoch: × STEP above the goal, ÷ STEP below goal·LOW_BAND, clamped to λ₀·[1/SPAN, SPAN]."""
    if fraction > goal:
        lam *= STEP
    elif fraction < goal * LOW_BAND:
        lam /= STEP
    return min(max(lam, lam0 / SPAN), lam0 * SPAN)


def control_lam(
    model: nn.Module, example: torch.Tensor, target: float, epoch: int, epochs: int, lam: float, lam0: float
) -> tuple[float, dict[str, Any]]:
    """The next λ and what the epoch's metrics record (mac_fraction, scheduled_macs, next_lam)."""
    fraction = live_mac_fraction(model, example)
    goal = scheduled_macs(target, epoch, epochs)
    new = next_lam(lam, fraction, goal, lam0)
    return new, {"mac_fraction": fraction, "scheduled_macs": goal, "next_lam": new}
