"""benchmarks.suite_lam_scale's cells: a given LR is its own cell (key and table column) and the cells without one
keep the keys of the result folders committed before the option existed."""

from __future__ import annotations

from benchmarks.suite_lam_scale import Cell, _lr_text


def test_lr_cells_have_keys_of_their_own_and_old_keys_stay() -> None:
    plain = Cell("mixer", 1.0, 0.9, 0, trained_start=True, distill=0.5)
    assert plain.key == "mixer/x1/0.9/seed0/trained-start/distill0.5"  # as in suite-distill/trained-start
    keys = {Cell("mixer", 1.0, 0.9, 0, trained_start=True, lr=lr).key for lr in (None, 0.1, 0.03)}
    assert keys == {
        "mixer/x1/0.9/seed0/trained-start",
        "mixer/x1/0.9/seed0/trained-start/lr0.1",
        "mixer/x1/0.9/seed0/trained-start/lr0.03",
    }


def test_lr_column_reads_the_runs_lr_and_marks_rows_without_one() -> None:
    assert _lr_text(0.3) == "0.3" and _lr_text(0.03) == "0.03"
    assert _lr_text(None) == "–"
