"""Smoke tests of the benchmark scripts' core functions in tiny configurations.

Only the output structure is checked (keys present, sizes and ratios positive and consistent): speed targets
belong to the benchmarks themselves, never to tests.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import artifact_size, overhead
from dwf_core.data.common import Split
from tests.dwf_core.helpers import write_band_npz


def test_overhead_time_steps_alternates_all_variants() -> None:
    result = overhead.time_steps("lenet5", batch=4, steps=3, warmup=1)
    assert set(result) == {*overhead.VARIANTS, "quiet_rounds"}
    assert 0 <= result["quiet_rounds"] <= 3
    for variant in overhead.VARIANTS:
        stats = result[variant]
        assert len(stats["times_ms"]) == 3
        assert 0 < stats["q1_ms"] <= stats["median_ms"] <= stats["q3_ms"]
        assert stats["iqr_ms"] >= 0
        if variant in overhead.BASELINE:
            assert stats["baseline"] == overhead.BASELINE[variant]
            assert stats["ratio_vs_dense"] > 0 and stats["paired_ratio_median"] > 0
        else:
            assert "ratio_vs_dense" not in stats


def test_overhead_tensor_bytes_counts_the_factors() -> None:
    dense = overhead.tensor_bytes("lenet5", "dense", batch=2)
    dwf = overhead.tensor_bytes("lenet5", "dwf", batch=2)
    for counts in (dense, dwf):
        assert counts["total"] == sum(v for k, v in counts.items() if k not in ("total", "input"))
        assert all(counts[k] > 0 for k in ("parameters", "gradients", "optimizer_state", "saved_for_backward"))
    # Depth 3 triples every conv/linear weight (biases stay single): more than 2x, less than 3x the parameters.
    assert 2 * dense["parameters"] < dwf["parameters"] < 3 * dense["parameters"]
    assert dwf["gradients"] == dwf["parameters"] == dwf["optimizer_state"]


def test_overhead_measure_structure_without_rss() -> None:
    row = overhead.measure("lenet5", batch=2, steps=2, warmup=1, rss=False, variants=("dense", "dwf", "dwf-cached"))
    assert row["variants"] == ["dense", "dwf", "dwf-cached"]
    assert set(row["tensor_bytes"]) == {"dense", "dwf", "dwf-cached"}
    assert all(r > 1 for r in row["tensor_bytes_ratio"].values())
    assert row["cached_max_abs_grad_diff"] == 0.0
    assert "peak_rss" not in row
    md = overhead._markdown({"command": "x", "commit": "c", "machine": "m", "date": "d"}, [row])
    assert "| lenet5 | cpu | dwf |" in md


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_overhead_rss_child_in_process() -> None:
    peak = overhead._rss_child("lenet5", "dwf", batch=2, steps=1, device="cpu")
    assert peak["peak_rss_mb"] >= peak["rss_before_mb"] > 0
    assert peak["peak_delta_mb"] >= 0


def _check_rows(rows: list[dict], sparsities: tuple[float, ...]) -> None:
    assert [r["target_sparsity"] for r in rows] == list(sparsities)
    for r in rows:
        assert r["weight_sparsity"] >= r["target_sparsity"] - 1e-9
        assert 0 < r["nnz"] < r["numel"]
        assert r["bound_bytes"] > 0
        assert r["dense_bytes"] > 0 and r["sparse_bytes"] > 0
        assert math.isclose(r["sparse_over_bound"], r["sparse_bytes"] / r["bound_bytes"])
        assert math.isclose(r["dense_over_sparse"], r["dense_bytes"] / r["sparse_bytes"])
        assert r["sparse_over_bound"] > 0 and r["dense_over_sparse"] > 0
        # Dense stores 4 bytes per element plus a header; the bound counts nnz·4 + numel/8.
        assert r["dense_bytes"] > 4 * r["numel"]
        assert r["bound_bytes"] >= 4 * r["nnz"]
    # More sparsity never makes the sparse file larger.
    sizes = [r["sparse_bytes"] for r in rows]
    assert sizes == sorted(sizes, reverse=True)


def test_artifact_size_random_init() -> None:
    sparsities = (0.9, 0.99)
    res = artifact_size.measure("lenet_300_100", sparsities=sparsities)
    assert res["model"] == "lenet_300_100" and res["parameters"] > 0
    assert "untrained" in res["weights"]
    _check_rows(res["rows"], sparsities)
    md = artifact_size._markdown({"command": "x", "commit": "c", "machine": "m", "date": "d"}, [res])
    assert "| lenet_300_100 | random init | 0.99 |" in md


def test_artifact_size_trained_path_on_tiny_data() -> None:
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen))
    data = SimpleNamespace(train=split, test=split)
    res = artifact_size.measure("lenet5", sparsities=(0.98,), data=data, train_samples=32, epochs=1)
    assert "32 MNIST" in res["weights"]
    assert 0.0 <= res["dense_test_accuracy"] <= 1.0
    _check_rows(res["rows"], (0.98,))
    assert 0.0 <= res["rows"][0]["test_accuracy"] <= 1.0


def test_mnist_table_smoke_writes_stamped_table_plot_and_resumes(tmp_path: Path) -> None:
    from benchmarks import mnist_table

    data = write_band_npz(tmp_path / "small.npz", 300, 100)
    argv = ["--smoke", "--data", str(data), "--out", str(tmp_path / "table"), "--jobs", "1"]
    assert mnist_table.main(argv) == 0
    out = tmp_path / "table"
    table = json.loads((out / "table.json").read_text())
    header, summary = table["header"], table["summary"]
    assert header["mode"] == "smoke" and header["commit"] and "mnist_table --smoke" in header["command"]
    assert summary["dense"]["n"] == 1
    # dwf-d3 and gmp ran at CR 10; magnitude is read off the dense run's frontier.
    assert set(summary["methods"]) == {"dwf-d3", "gmp", "magnitude"}
    for row in summary["methods"].values():
        cell = row["cells"]["10.0"]
        assert cell["n"] == 1 and 0.0 <= cell["acc_mean"] <= 1.0
        assert abs(cell["cr_mean"] / 10.0 - 1) <= 0.2
    markdown = (out / "table.md").read_text()
    assert "| DWF D=3 |" in markdown and header["commit"] in markdown and "CR 10" in markdown
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((out / "cells.json").read_text())["rows"]
    assert len(rows) == 3
    # A second invocation finds every cell done and trains nothing.
    assert mnist_table.main(argv) == 0
    assert len(json.loads((out / "cells.json").read_text())["rows"]) == 3


def test_mnist_table_default_job_row_takes_the_depth_of_its_target(tmp_path: Path) -> None:
    """Method "dwf" is the default job (nothing but the target): D = 3 at CR 10, its row titled as such."""
    from benchmarks import mnist_table

    data = write_band_npz(tmp_path / "small.npz", 300, 100)
    argv = ["--smoke", "--methods", "dwf", "--data", str(data), "--out", str(tmp_path / "table"), "--jobs", "1"]
    assert mnist_table.main(argv) == 0
    [row] = json.loads((tmp_path / "table" / "cells.json").read_text())["rows"]
    assert row["cell"]["method"] == "dwf" and row["depth"] == 3
    assert "| DWF, the default job (D by target) |" in (tmp_path / "table" / "table.md").read_text()


def test_mnist_table_from_dense_and_fine_tune_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "+ fine-tune" and "from dense" rows: fine-tuned after the cut; the second starts from a cached dense run."""
    from benchmarks import mnist_table

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the dense-weights cache lives in the temp folder
    data = str(write_band_npz(tmp_path / "small.npz", 300, 100))
    pre = mnist_table.Cell("lenet300", "dwf-d3-pre", 10.0, 0, 1, data)
    row = mnist_table.run_cell(pre, (10.0,))
    [cached] = (tmp_path / "dwf-mnist-table-dense").glob("lenet300-*-seed0-1ep-cpu.safetensors")
    stamp = cached.stat().st_mtime_ns
    assert row["compression_ratio"] == pytest.approx(10.0, rel=0.2) and 0.0 <= row["test_accuracy"] <= 1.0
    assert (row["init"], row["finetune_epochs"]) == ("balanced", 1)  # factors of the dense weights; 10% of 1 epoch
    # The same seed and epochs reuse the cached dense model.
    mnist_table.run_cell(replace(pre, cr=50.0), (50.0,))
    assert cached.stat().st_mtime_ns == stamp
    ft = mnist_table.run_cell(mnist_table.Cell("lenet300", "dwf-d4-ft", 10.0, 0, 1, data), (10.0,))
    assert ft["compression_ratio"] == pytest.approx(10.0, rel=0.2)
    assert (ft["init"], ft["finetune_epochs"]) == ("varmatch", 1)
    # "first half dense": the same budget as the other rows, split between the dense phase and DWF.
    half = mnist_table.run_cell(mnist_table.Cell("lenet300", "dwf-d3-half", 10.0, 0, 2, data), (10.0,))
    assert half["compression_ratio"] == pytest.approx(10.0, rel=0.2)
    assert (half["dense_epochs"], half["init"]) == (1, "balanced")
