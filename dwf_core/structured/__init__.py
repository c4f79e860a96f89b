"""Structured DWF (D-Gating): gated units, MAC counting, the MAC-budget cut and frontier.

Each chosen Linear neuron / conv output channel is multiplied by D−1 scalar gates. With L2 weight decay 2λ/D on the
gates and on the unit's weights and bias, the penalty (λ/D)(Σγ² + ‖ω‖²) equals λ·‖w_unit‖^{2/D} at its balanced
optimum: a group L_{2/D} penalty that drives whole units to zero (Kolb, Frost, Bischl, Rügamer, "Differentiable
Sparsity via D-Gating"). Modules: ``settings`` (config rules, defaults), ``gates`` (attach, fold), ``macs``
(counting), ``cut`` (collapse with a MAC target), ``frontier`` (cuts at several MAC budgets), ``run`` (the
pipeline's hook).
"""

from __future__ import annotations

from dwf_core.structured.gates import attach_gates, fold_gates, gated_modules, has_gates
from dwf_core.structured.macs import MacReport, count_macs

__all__ = ["MacReport", "attach_gates", "count_macs", "fold_gates", "gated_modules", "has_gates"]
