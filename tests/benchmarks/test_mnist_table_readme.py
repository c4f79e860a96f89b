"""``python -m benchmarks.mnist_table --readme`` copies each full table and its plot between the README's markers."""

from __future__ import annotations

from pathlib import Path

from benchmarks.mnist_table import README_END, README_START, update_readme


def test_readme_gets_the_full_tables_between_its_markers_and_nothing_else(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n\n{README_START}\nold table\n{README_END}\n\n## after\n")
    results = tmp_path / "benchmarks" / "results"
    (results / "mnist-table" / "lenet300-full").mkdir(parents=True)
    (results / "mnist-table" / "lenet300-full" / "table.md").write_text(
        "# LeNet-300-100: title\n\nCommand: `x`\n\nAll invocations that filled this table: `a`; `b`\n\n| m | CR 10 |\n"
    )
    (results / "mnist-table" / "lenet300-quick").mkdir()  # quick tables stay out of the README
    (results / "mnist-table" / "lenet300-quick" / "table.md").write_text("# quick\n")

    assert update_readme(readme, results) == ["benchmarks/results/mnist-table/lenet300-full"]
    text = readme.read_text()
    assert text.startswith("# intro\n") and text.endswith(f"{README_END}\n\n## after\n")
    assert "old table" not in text and "All invocations" not in text and "quick" not in text
    assert "Command: `x`\n\n| m | CR 10 |" in text
    assert "![LeNet-300-100: accuracy vs CR](benchmarks/results/mnist-table/lenet300-full/table.png)" in text
    update_readme(readme, results)
    assert readme.read_text() == text  # rerunning changes nothing


def test_readme_shows_the_60_epoch_equal_budget_table_after_the_30_epoch_one(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_START}\n{README_END}\n")
    results = tmp_path / "benchmarks" / "results"
    for kind in ("60ep", "full"):
        (results / "mnist-table" / f"lenet300-{kind}").mkdir(parents=True)
        (results / "mnist-table" / f"lenet300-{kind}" / "table.md").write_text(f"# title\n\n| {kind} |\n")
    names = update_readme(readme, results)
    assert names == [f"benchmarks/results/mnist-table/lenet300-{kind}" for kind in ("full", "60ep")]
    assert "**LeNet-300-100, 60 epochs for every row: the default job, 30 dense + 30 DWF epochs and GMP" in (
        readme.read_text()
    )


def test_readme_shows_the_lenet5_table_on_todays_code_from_the_precision_folder_before_the_gpu_ones(
    tmp_path: Path,
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_START}\n{README_END}\n")
    results = tmp_path / "benchmarks" / "results"
    for folder in ("mnist-table/lenet5-gpu", "precision/lenet5-cpu-bf16", "mnist-table/lenet5-full"):
        (results / folder).mkdir(parents=True)
        (results / folder / "table.md").write_text(f"# title\n\n| {folder} |\n")
    names = update_readme(readme, results)
    # lenet5-full (one seed, fp32, older code) is no longer shown: the bf16 table has every cell on today's code
    assert names == ["benchmarks/results/precision/lenet5-cpu-bf16", "benchmarks/results/mnist-table/lenet5-gpu"]
    text = readme.read_text()
    assert "**LeNet-5-Caffe, 20 epochs for every row, bf16 autocast on a CPU" in text
    assert "![LeNet-5-Caffe: accuracy vs CR](benchmarks/results/precision/lenet5-cpu-bf16/table.png)" in text
