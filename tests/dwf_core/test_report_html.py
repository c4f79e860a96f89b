"""report.html and plots/*.png from a run's metrics.json (dwf_core.report_html)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from dwf_core.report_html import REPORT_ARTIFACTS, report_artifacts, try_write_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_metrics(frontier: bool) -> dict[str, Any]:
    """The shape dwf_core.pipeline.run writes, 3 epochs, 2 layers."""
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_loss": 1.2 / e,
            "train_accuracy": 0.5 + 0.1 * e,
            "val_accuracy": 0.45 + 0.1 * e,
            "sparsity": 0.3 * e,
            "compression_ratio": 1 / (1 - 0.3 * e + 1e-9) if e < 3 else None,  # ∞ is stored as null
        }
        for e in (1, 2, 3)
    ]
    # A fine-tuning epoch after the collapse, numbered from 1 again (dwf_core.train's phase "finetune").
    history.append({"epoch": 1, "phase": "finetune", "train_loss": 0.2, "val_accuracy": 0.79, "sparsity": 0.91})
    metrics: dict[str, Any] = {
        "method": "dwf",
        "test_accuracy": 0.8125,
        "factorized_test_accuracy": 0.8250,
        "val_accuracy": 0.79,
        "factorized_val_accuracy": 0.8,
        "target_sparsity": 0.9,
        "sparsity": 0.9123,
        "compression_ratio": 11.4,
        "nnz": 877,
        "total": 10000,
        "threshold": 0.0123,
        "threshold_mode": "target",
        "lam": 0.00042,
        "layers": [
            {"name": "fc1.weight", "shape": [64, 128], "total": 8192, "nnz": 500, "sparsity": 0.939},
            {"name": "fc2.weight", "shape": [10, 64], "total": 640, "nnz": 377, "sparsity": 0.411},
        ],
        "history": history,
        "config": {"depth": 4, "epochs": 3, "lam": None, "target_sparsity": 0.9, "optimizer": "sgd", "lr": 0.3},
        "model": {"spec": "lenet_300_100", "source": "zoo", "weights": None},
        "dataset": {"source": "npz:mnist-<tiny>.npz", "num_classes": 10},
        "sparse_file": {"file_bytes": 4321, "bound_bytes": 5000},
        "device": "cpu",
        "train_seconds": 3.5,
        "artifacts": [
            {"name": "model.safetensors", "bytes": 40960, "sha256": "ab" * 32},
            {"name": "model.sparse.safetensors", "bytes": 4321, "sha256": "cd" * 32},
        ],
    }
    if frontier:
        metrics["frontier"] = [
            {
                "compression_ratio": cr,
                "sparsity": 1 - 1 / cr,
                "test_accuracy": acc,
                "val_accuracy": acc - 0.01,
                "nnz": int(10000 / cr),
                "bytes": int(50000 / cr),
                "threshold": t,
            }
            for cr, acc, t in ((5.0, 0.83, 0.001), (11.4, 0.8125, 0.0123), (40.0, 0.61, 0.05))
        ]
    return metrics


def _embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_from_metrics_json(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps(fake_metrics(frontier=True)))
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    path = write_report(tmp_path)
    assert path == tmp_path / "report.html" and path.is_file()
    text = path.read_text()

    # Self-contained: no external resources, five PNGs embedded, identical to plots/*.png.
    assert "http://" not in text and "https://" not in text and "<script" not in text
    pngs = _embedded_pngs(text)
    files = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name for p in files] == ["accuracy.png", "compression.png", "frontier.png", "layers.png", "loss.png"]
    assert len(pngs) == 5 and all(p.startswith(PNG_MAGIC) and len(p) > 2000 for p in pngs)
    assert sorted(pngs) == sorted(p.read_bytes() for p in files)

    # Settings, requested vs achieved sparsity, factorized vs collapsed accuracy, layers, frontier, sizes.
    assert "lenet_300_100" in text and "npz:mnist-&lt;tiny&gt;.npz" in text  # escaped
    assert re.search(r"<th>depth</th><td>4</td>", text)
    assert re.search(r"requested sparsity</th><td>90.00%", text)
    assert re.search(r"achieved sparsity</th><td>91.23%", text)
    assert re.search(r"test accuracy, factorized</th><td>82.50%", text)
    assert re.search(r"test accuracy, collapsed</th><td>81.25%", text)
    assert "fc2.weight" in text and "41.10%" in text
    assert "Frontier points" in text and "40.0×" in text
    assert "40.0 KiB" in text and "4.2 KiB" in text  # artifact sizes

    assert set(report_artifacts(tmp_path)) == set(REPORT_ARTIFACTS)
    assert report_artifacts(tmp_path)["plot-loss.png"] == tmp_path / "plots" / "loss.png"


def test_report_without_frontier_or_history(tmp_path: Path) -> None:
    metrics = fake_metrics(frontier=False)
    metrics["history"] = []
    metrics["target_sparsity"] = None
    path = write_report(tmp_path, metrics)
    text = path.read_text()
    assert "Frontier points" not in text
    assert re.search(r"requested sparsity</th><td>— \(λ given\)", text)
    # Every plot is still drawn (fixed artifact names), with a "no data" note where data is missing.
    assert len(_embedded_pngs(text)) == 5
    assert set(report_artifacts(tmp_path)) == set(REPORT_ARTIFACTS)


def test_try_write_report_never_raises(tmp_path: Path) -> None:
    assert try_write_report(tmp_path / "missing") is None
    assert not (tmp_path / "missing" / "report.html").exists()


def test_fine_tuning_epochs_follow_the_training_epochs() -> None:
    from dwf_core.report_html import _series

    history = fake_metrics(frontier=False)["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 1]
    assert _series(history, "train_loss") == ([1.0, 2.0, 3.0, 4.0], [1.0, 0.5, 1 / 3, 0.2])


def test_report_says_when_the_target_was_missed(tmp_path: Path) -> None:
    metrics = fake_metrics(frontier=False)
    assert "outside the target's band" not in write_report(tmp_path / "a", {**metrics, "target_met": True}).read_text()
    text = write_report(tmp_path / "b", {**metrics, "target_met": False}).read_text()
    assert re.search(r"achieved sparsity</th><td>91.23% \(outside the target's band", text)


def test_report_lists_lam_restarts(tmp_path: Path) -> None:
    metrics = fake_metrics(frontier=False)
    assert "restart" not in write_report(tmp_path / "a", {**metrics, "lam_restarts": []}).read_text()
    restart = {"epoch": 1, "lam": 0.0111, "dead_sparsity": 0.99885, "val_accuracy": 0.86, "next_lam": 0.00278}
    text = write_report(tmp_path / "b", {**metrics, "lam": 0.00278, "lam_restarts": [restart]}).read_text()
    said = "final λ</th><td>0.00278 (after 1 restart(s) with a lower λ; abandoned: 0.0111 at epoch 1 (99.89% dead))"
    assert said in text


def test_compression_plot_says_it_is_the_monitor_and_marks_the_final_cut() -> None:
    """A target job's epochs read ~1× at the monitor threshold, then the cut gives 5×: the plot must say which."""
    from dwf_core.report_html import _plot_compression

    history = [
        {"epoch": e, "monitor_threshold": 0.001, "sparsity": 0.0004 * e, "compression_ratio": 1 / (1 - 0.0004 * e)}
        for e in (1, 2, 3)
    ]
    fig = _plot_compression({"history": history, "compression_ratio": 5.0, "target_sparsity": 0.8})
    ax = fig.axes[0]
    assert ax.get_title() == "Compression ratio and sparsity per epoch at |w| < 0.001\n(monitor, not the final cut)"
    legend = ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["monitor CR", "final cut 5.0×"]
    final = [line for line in ax.get_lines() if line.get_label() == "final cut 5.0×"]
    assert len(final) == 1 and list(final[0].get_ydata()) == [5.0, 5.0]
    assert ax.get_ylim()[1] >= 5.0
    assert fig.axes[1].get_ylabel() == "sparsity at |w| < 0.001 (%)"
