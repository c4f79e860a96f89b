"""benchmarks.sparse_runtime: a tiny run writes both tables; the committed results render as committed."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.sparse_runtime import OUT, main, markdown


def test_committed_results_render_the_committed_table() -> None:
    saved = json.loads((OUT / "results.json").read_text())
    assert markdown(saved["header"], saved["rows"]) == (OUT / "README.md").read_text()


def test_smoke_run_writes_rows_for_both_random_sparsities(tmp_path: Path) -> None:
    argv = ["--job-epochs", "0", "--seconds", "0.02", "--repeats", "1", "--sample-ms", "0.1", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["model"] == "LeNet-300-100" for r in rows)
    text = (tmp_path / "README.md").read_text()
    assert "random 90% per layer" in text and "random 99% per layer" in text
