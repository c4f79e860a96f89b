"""The model suite's smoke mode (the CI tier of `python -m benchmarks.model_suite`): every method runs on a module,
an ONNX export and a GRU chosen by include globs, and the table, plot and resume work. Structure only: the
accuracies of a 1-epoch run on 256 samples say nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import model_suite, suite_models


def test_smoke_runs_every_method_writes_the_table_and_resumes(tmp_path: Path) -> None:
    assert model_suite.main(["--smoke", "--jobs", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "cells.json").read_text())["rows"]
    assert {(r["pair"], r["method"]) for r in rows} == {
        (pair, method) for pair in ("mixer", "vit-ts", "gru") for method in model_suite.METHODS
    }
    for row in rows:
        assert 0.0 <= row["test_accuracy"] <= 1.0 and not row["non_finite"]
        if row["method"] != "dense":
            assert abs(row["sparsity_achieved"] - 0.9) <= 0.01, row
        # Every weight matrix is factorized: the GRU's through its include globs, the ONNX ViT's MatMuls by default.
        assert row["factorized_share"] >= 0.9 and row["trainable_share"] == 1.0, row
    readme = (tmp_path / "README.md").read_text()
    assert "MLP-Mixer" in readme and "DWF (default job) 90%" in readme and "beats the best baseline on" in readme
    assert (tmp_path / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second invocation finds every cell done and trains nothing.
    assert model_suite.main(["--smoke", "--out", str(tmp_path)]) == 0
    assert len(json.loads((tmp_path / "cells.json").read_text())["rows"]) == len(rows)


def test_suite_models_take_their_datasets_shapes(tmp_path: Path) -> None:
    for name, shape in (("mixer", (1, 28, 28)), ("dwcnn", (1, 28, 28)), ("cnn1d", (1, 128)), ("gru", (24, 8))):
        logits = suite_models.MODULES[name]()(torch.zeros(3, *shape))
        assert logits.shape[0] == 3, name
    x, y = suite_models.waves(10, 0)
    assert x.shape == (10, 1, 128) and set(y.tolist()) <= {0, 1, 2, 3}
    x, y = suite_models.motifs(10, 0)
    assert x.shape == (10, 24, 8)


def test_what_if_cells_carry_their_settings_in_the_key() -> None:
    mode = {**model_suite.MODES["smoke"], "methods": ("gmp", "dwf"), "optimizer": "adam", "lr": 0.003}
    cells = model_suite.plan(mode)
    assert {c.method for c in cells} == {"gmp", "dwf"}  # no dense cell unless asked for
    assert all(c.key.endswith("/optimizer=adam/lr=0.003") and c.optimizer == "adam" for c in cells)
    default = model_suite.plan(model_suite.MODES["smoke"])
    assert all("optimizer=" not in c.key for c in default) and {c.method for c in default} == set(model_suite.METHODS)


def test_depth_what_if_reaches_dwf_cells_only(tmp_path: Path) -> None:
    """--depth: the DWF cells train at that depth (their key says so); the baselines' cells are the default ones."""
    mode = {**model_suite.MODES["smoke"], "methods": ("gmp", "dwf"), "depth": 2}
    cells = model_suite.plan(mode)
    assert all(c.key.endswith("/depth=2") == (c.method == "dwf") for c in cells)
    default_gmp = {c.key for c in model_suite.plan({**mode, "depth": None}) if c.method == "gmp"}
    assert {c.key for c in cells if c.method == "gmp"} == default_gmp
    dwf = next(c for c in cells if c.method == "dwf" and c.pair == "gru")
    row = model_suite.run_cell(replace(dwf, epochs=1), tmp_path)
    [run_dir] = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["config"]["depth"] == 2
    assert row["key"].endswith("/depth=2")


def test_dense_share_what_if_splits_dwf_epochs_and_keeps_the_total(tmp_path: Path) -> None:
    """--dense-share: a DWF cell trains the plain model for that share of its epochs first, then DWF for the rest."""
    mode = {**model_suite.MODES["smoke"], "methods": ("gmp", "dwf"), "dense_share": 0.5}
    cells = model_suite.plan(mode)
    assert all(c.key.endswith("/dense_share=0.5") == (c.method == "dwf") for c in cells)
    dwf = next(c for c in cells if c.method == "dwf" and c.pair == "mixer")
    model_suite.run_cell(replace(dwf, epochs=2), tmp_path)
    [run_dir] = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dense_start"]["epochs"] == 1 and metrics["config"]["epochs"] == 1


def test_a_cell_trains_from_scratch_even_when_an_old_run_folder_is_left(tmp_path: Path) -> None:
    """A re-run after its row was deleted must not resume the old run's checkpoints (they may come from older code)."""
    cell = model_suite.Cell("gru", "dwf", 0.9, 0, 1, 64, 32)
    first = model_suite.run_cell(cell, tmp_path)
    [run_dir] = (tmp_path / "runs").iterdir()
    assert any((run_dir / "checkpoints").rglob("*.safetensors"))
    (run_dir / "stale-marker").write_text("left by an older run")
    again = model_suite.run_cell(cell, tmp_path)
    assert not (run_dir / "stale-marker").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from_epoch"] is None
    assert again["test_accuracy"] == first["test_accuracy"]  # same seed, same code: the same run again
