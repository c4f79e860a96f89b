"""A sweep's accuracy-vs-compression Pareto front across its children: frontier.json and frontier.png.

Candidates are every succeeded child's sparse model and the extra cuts of its own frontier (``method.frontier``:
metrics["frontier"]), so a sweep of a few targets with a few cuts each still gives a dense curve. A candidate is on
the compression front when no other candidate is at least as accurate with at least its compression ratio (and
better in one of them); on the MAC front likewise with accuracy against the fraction of the dense model's MACs the
compact model keeps (``metrics.inference``, or the structured run's ``mac_fraction``), where children report MACs.
Pure functions of the children's metrics; the worker's ``finalize_sweep`` stores the results.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

FRONTIER_JSON = "frontier.json"
FRONTIER_PNG = "frontier.png"


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def mac_fraction(metrics: dict[str, Any]) -> float | None:
    """The fraction of the dense model's MACs the job's compact model keeps, or None where it was not measured."""
    inference = metrics.get("inference") or {}
    dense = _finite((inference.get("dense") or {}).get("macs"))
    compact = _finite((inference.get("compact") or {}).get("macs"))
    if dense and compact is not None:
        return compact / dense
    return _finite(metrics.get("mac_fraction"))


def candidates(children: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model a succeeded child produced: its main sparse model and each cut of its own frontier.

    ``children``: dicts with ``job_id``, ``point`` (the grid values), ``status`` and ``metrics``.
    """
    rows: list[dict[str, Any]] = []
    for child in children:
        metrics = child.get("metrics") or {}
        if child.get("status") != "succeeded":
            continue
        accuracy = _finite(metrics.get("test_accuracy"))
        ratio = _finite(metrics.get("compression_ratio"))
        if accuracy is not None and ratio is not None:
            rows.append(
                {
                    "job_id": child["job_id"],
                    "point": child["point"],
                    "model": "model.sparse.safetensors",
                    "test_accuracy": accuracy,
                    "compression_ratio": ratio,
                    "sparsity": _finite(metrics.get("sparsity")),
                    "mac_fraction": mac_fraction(metrics),
                }
            )
        for cut in metrics.get("frontier") or []:
            cut_accuracy, cut_ratio = _finite(cut.get("test_accuracy")), _finite(cut.get("compression_ratio"))
            if cut_accuracy is None or cut_ratio is None:
                continue
            rows.append(
                {
                    "job_id": child["job_id"],
                    "point": child["point"],
                    "model": cut.get("file"),
                    "test_accuracy": cut_accuracy,
                    "compression_ratio": cut_ratio,
                    "sparsity": _finite(cut.get("sparsity")),
                    "mac_fraction": None,  # the extra cuts are not compacted
                }
            )
    return rows


def pareto(rows: Sequence[dict[str, Any]], *, better: str, key: str) -> list[dict[str, Any]]:
    """The rows no other row dominates on (test_accuracy higher, ``key`` ``better``: "higher"|"lower"), sorted by
    ``key`` from the most accurate end; rows without ``key`` are left out."""
    sign = 1.0 if better == "higher" else -1.0
    usable = [r for r in rows if r.get(key) is not None]
    # Sort by the size measure (best first), ties by accuracy: a sweep from the best size keeps each row that is more
    # accurate than every row of a better size.
    ordered = sorted(usable, key=lambda r: (-sign * r[key], -r["test_accuracy"]))
    front: list[dict[str, Any]] = []
    best_accuracy = -math.inf
    for row in ordered:
        if row["test_accuracy"] > best_accuracy:
            front.append(row)
            best_accuracy = row["test_accuracy"]
    front.reverse()
    return front


def frontier(sweep_id: str, children: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The content of frontier.json: every candidate, the two fronts, and the children that gave no model."""
    rows = candidates(children)
    return {
        "sweep_id": sweep_id,
        "children": len(children),
        "succeeded": sum(1 for c in children if c.get("status") == "succeeded"),
        "not_succeeded": [
            {"job_id": c["job_id"], "point": c["point"], "status": c.get("status")}
            for c in children
            if c.get("status") != "succeeded"
        ],
        "candidates": rows,
        "compression_front": pareto(rows, better="higher", key="compression_ratio"),
        "mac_front": pareto(rows, better="lower", key="mac_fraction"),
    }


def _label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def plot_png(front: dict[str, Any]) -> bytes:
    """frontier.png: accuracy against compression ratio (log x), and against kept MACs where any child has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = front["candidates"]
    with_macs = [r for r in rows if r.get("mac_fraction") is not None]
    panels = 2 if with_macs else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.4), squeeze=False)
    ax = axes[0][0]
    ax.scatter(
        [r["compression_ratio"] for r in rows],
        [100 * r["test_accuracy"] for r in rows],
        color="0.6",
        s=18,
        label="every model",
    )
    comp = front["compression_front"]
    ax.plot(
        [r["compression_ratio"] for r in comp],
        [100 * r["test_accuracy"] for r in comp],
        "o-",
        color="tab:blue",
        label="Pareto front",
    )
    for r in comp:
        if r["model"] == "model.sparse.safetensors":
            ax.annotate(_label(r["point"]), (r["compression_ratio"], 100 * r["test_accuracy"]), fontsize=7)
    if rows:
        ax.set_xscale("log")
    ax.set_xlabel("compression ratio (weights / non-zeros)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"sweep {front['sweep_id']}: {front['succeeded']} of {front['children']} children")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if with_macs:
        ax2 = axes[0][1]
        ax2.scatter(
            [r["mac_fraction"] for r in with_macs], [100 * r["test_accuracy"] for r in with_macs], color="0.6", s=18
        )
        mac = front["mac_front"]
        ax2.plot([r["mac_fraction"] for r in mac], [100 * r["test_accuracy"] for r in mac], "o-", color="tab:orange")
        ax2.set_xlabel("fraction of the dense model's MACs kept (compact model)")
        ax2.set_ylabel("test accuracy (%)")
        ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
