"""benchmarks.hf_model_types on two model types: each default job runs end to end and the table says so."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.hf_model_types import main


def test_a_decoder_and_a_grouped_query_model_run_end_to_end(tmp_path: Path) -> None:
    main(["--types", "gpt2,mistral", "--out", str(tmp_path)])
    rows = {r["model_type"]: r for r in json.loads((tmp_path / "rows.json").read_text())["rows"]}
    for model_type in ("gpt2", "mistral"):
        row = rows[model_type]
        assert row["ok"] and row["onnx"], row  # GPT-2: no pad token; Mistral: SDPA with grouped K/V heads
        assert row["factorized_share"] > 0.95 and row["sparsity_all"] > 0.85
    assert "| mistral | ok |" in (tmp_path / "README.md").read_text()
