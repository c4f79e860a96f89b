"""The accuracy–MAC frontier of one structured run: the trained model cut at several MAC budgets.

Every point uses the same unit order as the job's own cut (``UnitCutter``), so a user sees what a smaller budget
would cost without training again. Points are evaluated, not saved: the job's artifacts hold the budget it asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dwf_core.evaluate import Labeled, accuracy_of, predict_logits
from dwf_core.structured.cut import UnitCutter
from dwf_core.structured.settings import check_mac_budgets


def mac_frontier(
    cutter: UnitCutter,
    budgets: Sequence[float],
    val: Labeled,
    test: Labeled | None = None,
    *,
    batch_size: int = 1000,
) -> list[dict[str, Any]]:
    """Cut ``cutter``'s model at each budget (largest first) and evaluate it; leaves the model at the last cut.

    Returns:
        One dict per budget: budget, mac_fraction, kept_macs, target_met (the budget was reachable), units_removed,
        units (kept per layer), val_accuracy, test_accuracy (None without ``test``).
    """
    points = []
    for budget in check_mac_budgets(list(budgets)):
        report = cutter.cut_to(budget)
        model = cutter.model
        points.append(
            {
                "budget": budget,
                "mac_fraction": report.fraction,
                "kept_macs": report.kept,
                "target_met": report.fraction <= budget,
                "units_removed": cutter.units_removed(),
                "units": {layer.name: layer.units for layer in report.layers},
                "val_accuracy": accuracy_of(predict_logits(model, val.x, batch_size=batch_size), val.y),
                "test_accuracy": (
                    accuracy_of(predict_logits(model, test.x, batch_size=batch_size), test.y)
                    if test is not None
                    else None
                ),
            }
        )
    return points
