"""Issue 14: does bf16 cost DWF more than GMP? The same MNIST table cells in float32 and under bf16 autocast.

    python -m benchmarks.precision_table      # reads benchmarks/results/precision/MODEL-cpu-{fp32,bf16}/cells.json

The cells come from ``python -m benchmarks.mnist_table --device cpu`` and ``--device cpu-bf16`` (the commands are in
each folder's cells.json and in benchmarks/results/precision/README.md). Per method and CR: the mean test accuracy
of each precision over its seeds, the mean of the per-seed differences bf16 − fp32 over the seeds both have (the
same seed gives the same init and data order, so the pair isolates the arithmetic), and the mean seconds per run.
Only dense, the default DWF job and GMP are compared: the LeNet-5 bf16 folder also holds the other baselines of the
equal-budget table README shows from it, which were never run in float32.
Prints the markdown table and writes it to benchmarks/results/precision/table.md.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.stamp import ROOT

RESULTS = ROOT / "results" / "precision"  # ROOT: the benchmarks folder
MODELS = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5-Caffe"}
METHOD_NAMES = {"dwf": "DWF, the default job", "gmp": "GMP", "dense": "dense"}


def _rows(folder: Path) -> dict[tuple[str, float | None, int], dict[str, Any]]:
    """The folder's rows by (method, CR, seed); {} when it has none yet."""
    path = folder / "cells.json"
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {(r["cell"]["method"], r["cell"]["cr"], r["cell"]["seed"]): r for r in rows}


def _mean(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def table(model: str) -> str | None:
    """One model's comparison as markdown, or None when neither precision has rows."""
    fp32, bf16 = _rows(RESULTS / f"{model}-cpu-fp32"), _rows(RESULTS / f"{model}-cpu-bf16")
    if not fp32 and not bf16:
        return None
    lines = [
        f"**{MODELS[model]}** (test accuracy %, CPU, one torch thread per run)",
        "",
        "| method | CR | fp32 | bf16 autocast | bf16 − fp32, paired by seed (pp) | seconds per run fp32 → bf16 |",
        "|---|---|---|---|---|---|",
    ]
    compared = {(m, cr) for m, cr, _ in fp32.keys() | bf16.keys() if m in METHOD_NAMES}
    cells = sorted(compared, key=lambda k: (k[0], k[1] or 0.0))
    for method, cr in cells:
        a = {s: r for (m, c, s), r in fp32.items() if (m, c) == (method, cr)}
        b = {s: r for (m, c, s), r in bf16.items() if (m, c) == (method, cr)}
        both = sorted(a.keys() & b.keys())
        diffs = [100 * (b[s]["test_accuracy"] - a[s]["test_accuracy"]) for s in both]
        diff = f"{statistics.mean(diffs):+.2f} (seeds {', '.join(map(str, both))})" if diffs else "–"
        secs = [statistics.mean(r["seconds"] for r in rows.values()) if rows else None for rows in (a, b)]
        speed = " → ".join("–" if x is None else f"{x:.0f}" for x in secs)
        lines.append(
            f"| {METHOD_NAMES.get(method, method)} | {'–' if cr is None else f'{cr:g}'} "
            f"| {_mean([100 * r['test_accuracy'] for r in a.values()])} "
            f"| {_mean([100 * r['test_accuracy'] for r in b.values()])} | {diff} | {speed} |"
        )
    return "\n".join(lines)


def main() -> int:
    tables = [t for t in (table(model) for model in MODELS) if t is not None]
    text = "\n\n".join(tables) + "\n"
    sys.stdout.write(text)
    (RESULTS / "table.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
