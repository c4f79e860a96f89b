"""benchmarks.inference: the table renders dense → compact → int8 chains from the committed results."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.inference import OUT, markdown, update_readme


def test_committed_results_render_the_committed_table() -> None:
    saved = json.loads((OUT / "results.json").read_text())
    assert markdown(saved["header"], saved["rows"]) == (OUT / "README.md").read_text()


def test_rows_show_int8_where_measured_and_the_reason_where_not_compacted() -> None:
    saved = json.loads((OUT / "results.json").read_text())
    lenet = next(r for r in saved["rows"] if r["model"] == "LeNet-300-100")
    skipped = {
        **lenet,
        "model": "Odd",
        "inference": {"dense": lenet["inference"]["dense"]},
        "compact": {"skipped": "why"},
    }
    no_int8 = {**lenet, "model": "NoInt8", "compact": {k: v for k, v in lenet["compact"].items() if k != "int8"}}
    no_int8["inference"] = {k: v for k, v in lenet["inference"].items() if k not in ("compact_int8", "int8_speedup")}
    lines = markdown(saved["header"], [lenet, skipped, no_int8]).splitlines()
    row = next(line for line in lines if line.startswith("| LeNet-300-100 "))
    assert row.count(" → ") >= 7 and "× / " in row  # float → int8 accuracy, three-model chains, two speed-ups
    assert next(line for line in lines if line.startswith("| Odd ")).endswith("not compacted: why |||||")
    plain = next(line for line in lines if line.startswith("| NoInt8 "))
    assert "× / " not in plain and plain.split(" | ")[3].count("→") == 0


def test_update_readme_replaces_only_the_marked_block(tmp_path: Path) -> None:
    from benchmarks.inference import README_END, README_START

    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_START}\nSTALE-TABLE\n{README_END}\nafter\n")
    update_readme(readme, OUT)
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "STALE-TABLE" not in text
    assert "LeNet-300-100" in text
