"""benchmarks.precision_table: the fp32 and bf16 cells of the same method, CR and seed side by side, the difference
paired by seed (only seeds both precisions have), and the committed table matches the committed cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import precision_table


def _write(folder: Path, rows: list[tuple[str, float | None, int, float, float]]) -> None:
    folder.mkdir(parents=True)
    cells = [
        {"cell": {"method": m, "cr": cr, "seed": seed}, "test_accuracy": acc, "seconds": secs}
        for m, cr, seed, acc, secs in rows
    ]
    (folder / "cells.json").write_text(json.dumps({"header": {}, "rows": cells}))


def test_differences_are_paired_by_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_table, "RESULTS", tmp_path)
    _write(tmp_path / "lenet5-cpu-fp32", [("dwf", 100.0, 0, 0.980, 400), ("dwf", 100.0, 1, 0.990, 420)])
    # seed 2 has no fp32 twin: in bf16's mean, not in the paired difference
    _write(
        tmp_path / "lenet5-cpu-bf16",
        [
            ("dwf", 100.0, 0, 0.981, 300),
            ("dwf", 100.0, 1, 0.993, 280),
            ("dwf", 100.0, 2, 0.900, 290),
            ("snip", 100.0, 0, 0.950, 130),  # the equal-budget table's other baselines: not compared
        ],
    )
    text = precision_table.table("lenet5")
    assert text is not None
    row = next(line for line in text.splitlines() if line.startswith("| DWF"))
    assert "| 98.50 ± 0.71 (n=2) |" in row and "(n=3)" in row
    assert "+0.20 (seeds 0, 1)" in row  # (0.1 + 0.3) / 2 pp
    assert "410 → 290" in row
    assert "snip" not in text.lower()
    assert precision_table.table("lenet300") is None  # no folders: no table


def test_the_committed_table_is_the_committed_cells() -> None:
    committed = (precision_table.RESULTS / "table.md").read_text()
    tables = [t for t in (precision_table.table(m) for m in precision_table.MODELS) if t is not None]
    assert committed == "\n\n".join(tables) + "\n"
