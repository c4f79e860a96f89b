"""benchmarks.sweep_scaling: its grid and table, and one real tiny run on 1 and 2 embedded workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.sweep_scaling import table, targets

ROOT = Path(__file__).resolve().parents[2]


def test_targets_are_distinct_and_within_the_range() -> None:
    assert targets(4) == [0.5, 0.66, 0.82, 0.98]
    assert targets(1) == [0.9]
    assert len(set(targets(16))) == 16


def test_table_gives_the_speedup_against_one_worker() -> None:
    text = table([{"workers": 1, "seconds": 100.0}, {"workers": 2, "seconds": 50.0}])
    assert "| 2 | 50.0 | 2.00× |" in text and "| 1 | 100.0 | 1.00× |" in text


@pytest.mark.slow
def test_a_tiny_run_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "scaling"
    cmd = [sys.executable, "-m", "benchmarks.sweep_scaling", "--children", "2", "--epochs", "1", "--train", "300",
           "--test", "100", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["workers"] for r in result["rows"]] == [1, 2]
    assert all(len(r["children"]) == 2 and r["seconds"] > 0 for r in result["rows"])
    assert "speed-up vs 1 worker" in out.with_suffix(".md").read_text()
