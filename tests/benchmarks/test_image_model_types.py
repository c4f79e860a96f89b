"""benchmarks.image_model_types on one torchvision model: the default job runs end to end and the table says so."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.image_model_types import main


def test_mnasnet_runs_end_to_end(tmp_path: Path) -> None:
    # MNASNet refused every reload of its own tensors (no module versions in them) until 2026-12-05.
    main(["--models", "torchvision:mnasnet0_5", "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert row["ok"] and row["onnx"] and row["inference"], row
    assert row["factorized_share"] > 0.95 and row["sparsity_all"] > 0.85
    assert "| torchvision:mnasnet0_5 | ok |" in (tmp_path / "README.md").read_text()
