"""Structured-DWF settings: the rules for ``structure``/``target_macs``/``mac_frontier`` and their defaults.

Kept free of torch-heavy imports: ``TrainConfig.validate`` calls ``check_structure`` on every config.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from dwf_core.errors import ConfigError

if TYPE_CHECKING:
    from dwf_core.config import TrainConfig

STRUCTURES = ("weights", "units", "both")
# MAC fractions cut from every structured run unless the config names its own (metrics "mac_frontier").
MAC_FRONTIER: tuple[float, ...] = (0.5, 0.25, 0.1, 0.05)
MAX_MAC_FRONTIER_POINTS = 32
# λ of a structured run without lam. A group penalty λ·‖w_g‖^{2/D} is n^{1−1/D} times weaker than DWF's λ·Σ|w|^{2/D}
# on the same n weights of equal size, so the per-weight default would barely touch whole units. LeNet-5/MNIST, D = 3,
# LR 0.1, fixed λ for 3 epochs: 2e-3 left every unit above ε, 1e-2 kept 98.2% at a 10% MAC cut, 3e-2 removed all but
# 1.9% of the MACs by itself (97.1%). With target_macs 0.1 and 20 epochs, as λ's start: 1e-2 overshot (6.6% of the
# MACs, 98.97% test), 5e-3 landed on 10.0% with 99.11% (benchmarks/results/structured/README.md).
STRUCTURED_LAM: dict[int, float] = {3: 5e-3}
FALLBACK_STRUCTURED_LAM = 5e-3


def structured_lam(depth: int) -> float:
    """λ of a structured run at ``depth`` (gates + weight = D factors per unit) when none is given."""
    return STRUCTURED_LAM.get(depth, FALLBACK_STRUCTURED_LAM)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_mac_budgets(budgets: Any) -> list[float]:
    """Sorted (descending) unique MAC fractions, each in (0, 1), at most ``MAX_MAC_FRONTIER_POINTS``.

    Raises:
        ConfigError: param "mac_frontier".
    """
    if not isinstance(budgets, list | tuple) or not all(_finite(b) for b in budgets):
        raise ConfigError(f"mac_frontier must be a list of MAC fractions, got {budgets!r}", param="mac_frontier")
    values = sorted({float(b) for b in budgets}, reverse=True)
    if len(values) > MAX_MAC_FRONTIER_POINTS:
        raise ConfigError(f"mac_frontier takes at most {MAX_MAC_FRONTIER_POINTS} fractions", param="mac_frontier")
    for value in values:
        if not 0 < value < 1:
            raise ConfigError(f"mac_frontier fractions must be in (0, 1), got {value!r}", param="mac_frontier")
    return values


def check_structure(cfg: TrainConfig) -> None:
    """Validate the structured settings of ``cfg``.

    Raises:
        ConfigError: with ``param`` naming the field (structure, target_macs, mac_frontier, target_sparsity, depth).
    """
    if cfg.structure not in STRUCTURES:
        raise ConfigError(f"structure must be one of {', '.join(STRUCTURES)}, got {cfg.structure!r}", param="structure")
    structured = cfg.structure != "weights"
    if structured and cfg.method != "dwf":
        raise ConfigError(
            f"structure {cfg.structure!r} applies to method 'dwf' only, got method {cfg.method!r}", param="structure"
        )
    if cfg.target_macs is not None:
        if not (_finite(cfg.target_macs) and 0 < cfg.target_macs <= 1):
            raise ConfigError(f"target_macs must be in (0, 1], got {cfg.target_macs!r}", param="target_macs")
        if not structured:
            raise ConfigError(
                "target_macs needs structure 'units' or 'both' (units are what a MAC budget removes)",
                param="target_macs",
            )
    if cfg.mac_frontier is not None:
        check_mac_budgets(cfg.mac_frontier)
        if cfg.mac_frontier and not structured:
            raise ConfigError("mac_frontier needs structure 'units' or 'both'", param="mac_frontier")
    if structured and cfg.frontier:
        raise ConfigError(
            "frontier cuts weights at compression ratios; a structured run cuts units at MAC budgets: use mac_frontier",
            param="frontier",
        )
    if cfg.structure == "units" and cfg.target_sparsity is not None:
        raise ConfigError(
            "structure 'units' removes whole units and has no per-weight target: use target_macs, or structure "
            "'both' for a target_sparsity",
            param="target_sparsity",
        )
    if structured and cfg.depth is not None and cfg.depth < 2:
        raise ConfigError(
            f"structure {cfg.structure!r} needs depth ≥ 2 (D − 1 gates per unit), got {cfg.depth!r}", param="depth"
        )
