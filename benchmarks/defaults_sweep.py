"""Measure the default hyperparameters: LeNet-300-100 on MNIST through the real ``dwf_core.pipeline.run``.

    python -m benchmarks.defaults_sweep --grid main      # D × λ at the default LR/momentum, 40 epochs
    python -m benchmarks.defaults_sweep --grid lr        # LR, momentum and init variants at D = 3

Writes benchmarks/results/defaults-GRID.json and .md (one row per run, appended as runs finish, so a long
sweep can be stopped and resumed: runs already in the JSON are skipped).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dwf_core.config import TrainConfig
from dwf_core.pipeline import RunSpec, run

ROOT = Path(__file__).resolve().parent
MNIST = "mnist-idx:" + str(ROOT.parent.parent / "shared" / "data" / "mnist")

GRIDS: dict[str, list[dict[str, Any]]] = {
    "main": [{"depth": d, "lam": lam} for d in (3, 2, 4) for lam in (2e-4, 3e-4, 5e-4, 1e-4)],
    "lr": [
        {"depth": 3, "lam": 2e-4, "lr": 0.1},
        {"depth": 3, "lam": 2e-4, "lr": 0.5},
        {"depth": 3, "lam": 2e-4, "momentum": 0.0, "lr": 1.0},
        {"depth": 3, "lam": 2e-4, "varmatch_variant": "published"},
        {"depth": 3, "lam": 2e-4, "optimizer": "adam", "lr": 1e-3},
    ],
    # VarMatch reading, over more seeds: a single seed did not separate the two.
    "variant": [
        {"depth": 3, "lam": 2e-4, "varmatch_variant": v, "seed": s} for s in (1, 2) for v in ("exact", "published")
    ],
}


def threads_prefix() -> str:
    """The OMP_NUM_THREADS setting the sweep ran under, as it would be typed before the command."""
    value = os.environ.get("OMP_NUM_THREADS")
    return f"OMP_NUM_THREADS={value} " if value else ""


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _row(settings: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": settings,
        "test_accuracy": metrics["test_accuracy"],
        "factorized_test_accuracy": metrics["factorized_test_accuracy"],
        "val_accuracy": metrics["val_accuracy"],
        "compression_ratio": metrics["compression_ratio"],
        "sparsity": metrics["sparsity"],
        "threshold": metrics["threshold"],
        "layers_nnz": {layer["name"]: layer["nnz"] for layer in metrics["layers"]},
        "train_seconds": metrics["train_seconds"],
        "lam": metrics["config"]["lam"],
        "lr": metrics["config"]["lr"],
    }


def _markdown(header: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"# Defaults sweep `{header['grid']}` (LeNet-300-100, MNIST, {header['epochs']} epochs, seed {header['seed']} "
        "unless a row sets it)",
        "",
        f"Command: `{header['command']}` · commit {header['commit']} · {header['machine']} · {header['date']}",
        "",
        "| settings | λ | LR | test acc (sparse) | test acc (factorized) | CR | threshold | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        lines.append(
            f"| {s} | {r['lam']:.0e} | {r['lr']} | {100 * r['test_accuracy']:.2f}% | "
            f"{100 * r['factorized_test_accuracy']:.2f}% | {r['compression_ratio']:.1f} | {r['threshold']:.2g} | "
            f"{r['train_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="main")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=MNIST)
    args = parser.parse_args()
    out_json = ROOT / "results" / f"defaults-{args.grid}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "grid": args.grid,
        "epochs": args.epochs,
        "seed": args.seed,
        "command": threads_prefix() + "python -m benchmarks.defaults_sweep " + " ".join(sys.argv[1:]),
        "commit": _commit(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)",
        "date": dt.date.today().isoformat(),
    }
    rows: list[dict[str, Any]] = json.loads(out_json.read_text())["rows"] if out_json.exists() else []
    done = [r["settings"] for r in rows]
    for settings in GRIDS[args.grid]:
        if settings in done:
            continue
        cfg = TrainConfig(**{"epochs": args.epochs, "seed": args.seed, "device": "cpu", **settings})
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            metrics = run(
                RunSpec(model="lenet_300_100", data=args.data, out_dir=Path(tmp), train=cfg, export_onnx=False)
            )
        rows.append(_row(settings, metrics))
        print(
            f"{settings}: acc {metrics['test_accuracy']:.4f} CR {metrics['compression_ratio']:.1f} "
            f"({time.monotonic() - started:.0f}s)",
            flush=True,
        )
        out_json.write_text(json.dumps({"header": header, "rows": rows}, indent=2))
        out_json.with_suffix(".md").write_text(_markdown(header, rows))


if __name__ == "__main__":
    main()
