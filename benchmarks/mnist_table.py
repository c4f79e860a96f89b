"""The MNIST quality table: test accuracy at fixed compression ratios, DWF (D = 2, 3, 4) beside every baseline.

    python -m benchmarks.mnist_table --quick                      # LeNet-300-100, 2 CRs, 1 seed, 3 epochs (< 10 min)
    python -m benchmarks.mnist_table --full --model lenet300      # 5 CRs × 3 seeds, 30 epochs (hours on 2 cores)
    python -m benchmarks.mnist_table --full --model lenet5

Every cell is one real ``dwf_core.pipeline.run`` (the code ``dwf train`` runs) with ``--target-sparsity
1 − 1/CR``; "magnitude" comes from the dense run's frontier, which is the same computation as ``--method
magnitude`` (train dense, cut at the global magnitude quantile) without training it once per CR. Runs go to
``--jobs`` worker processes with one torch thread each and are appended to ``cells.json`` as they finish,
so a stopped table resumes where it stopped. Writes table.json, table.md and table.png (accuracy vs CR, log
x) under benchmarks/results/mnist-table/MODEL-MODE/, each stamped with the command, commit, machine, date.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.pool import run_cells
from benchmarks.stamp import MNIST_DIR, ROOT, stamp, stamp_line

MODELS = {"lenet300": "lenet_300_100", "lenet5": "lenet5"}
MODEL_TITLES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5-Caffe"}
# Per-model training settings on top of the defaults, the same for every method. LeNet-5-Caffe (no
# non-linearity after its convs) diverged to NaN within 5–17 steps at the default LRs (dense 0.1, DWF 0.3, with
# or without input standardization, dense even with 1 epoch of warmup); gradient-norm clipping at 5 trains it.
MODEL_SETTINGS: dict[str, dict[str, Any]] = {"lenet300": {}, "lenet5": {"max_grad_norm": 5.0}}
DWF_METHODS = ("dwf-d2", "dwf-d3", "dwf-d4")
# The default job: DWF with nothing but the target (its depth from dwf_core.defaults.depth_for_target), what issue 14's
# equal-budget target is about.
DWF_DEFAULT = "dwf"
# DWF followed by the masked fine-tuning magnitude-ft gets (10% of the epochs, LR 0.01, zeros fixed): DWF's
# penalty also shrinks the weights it keeps, and a user who fine-tunes after magnitude pruning would do the same.
DWF_FT_METHODS = ("dwf-d3-ft", "dwf-d4-ft")
# DWF started from the trained dense model of the same seed (the dense run's weights, balanced factors: what a user
# with a trained model gets), then the same fine-tuning: twice the epochs of the other rows, plus 10%.
DWF_PRE_METHODS = ("dwf-d3-pre", "dwf-d4-pre")
# DWF inside the same budget as every other row: the first half of the epochs dense (TrainConfig.dense_epochs), the
# second half DWF from those weights (issue 14's equal-budget comparison of dense-first against from-scratch).
DWF_HALF_METHODS = ("dwf-d3-half", "dwf-d4-half")
BASELINES = ("magnitude-ft", "gmp", "snip", "synflow", "random")
# Row order of the table; "magnitude" is derived from "dense".
ROWS = (
    DWF_DEFAULT,
    "dwf-d3",
    "dwf-d4",
    "dwf-d2",
    *DWF_HALF_METHODS,
    *DWF_FT_METHODS,
    *DWF_PRE_METHODS,
    "magnitude",
    *BASELINES,
)
ROW_TITLES = {
    DWF_DEFAULT: "DWF, the default job (D by target)",
    "dwf-d2": "DWF D=2 (L1)",
    "dwf-d3": "DWF D=3",
    "dwf-d4": "DWF D=4",
    "dwf-d3-half": "DWF D=3, first half dense",
    "dwf-d4-half": "DWF D=4, first half dense",
    "dwf-d3-ft": "DWF D=3 + fine-tune",
    "dwf-d4-ft": "DWF D=4 + fine-tune",
    "dwf-d3-pre": "DWF D=3 from dense + fine-tune",
    "dwf-d4-pre": "DWF D=4 from dense + fine-tune",
    "magnitude": "magnitude (no fine-tune)",
    "magnitude-ft": "magnitude + fine-tune",
    "gmp": "GMP (Zhu & Gupta)",
    "snip": "SNIP",
    "synflow": "SynFlow",
    "random": "random at init",
}
MODES: dict[str, dict[str, Any]] = {
    "smoke": {"crs": (10.0,), "seeds": (0,), "epochs": 1, "methods": ("dense", "dwf-d3", "gmp")},
    "quick": {"crs": (10.0, 100.0), "seeds": (0,), "epochs": 3, "methods": ("dense", *DWF_METHODS, *BASELINES)},
    "full": {
        "crs": (10.0, 50.0, 100.0, 200.0, 500.0),
        "seeds": (0, 1, 2),
        "epochs": 30,
        "methods": ("dense", *DWF_METHODS, *DWF_HALF_METHODS, *BASELINES, *DWF_FT_METHODS, *DWF_PRE_METHODS),
    },
}


@dataclass(frozen=True)
class Cell:
    """One run: a method at a compression ratio (None for dense) and a seed."""

    model: str
    method: str
    cr: float | None
    seed: int
    epochs: int
    data: str
    device: str = "cpu"  # not part of the key: a GPU table has its own folder

    @property
    def key(self) -> str:
        return f"{self.method}|{self.cr}|{self.seed}|{self.epochs}"


# --device: where every run trains and in what arithmetic (TrainConfig.precision, dwf_core.precision). "cuda" runs
# under bf16 autocast (the default on CUDA), "cuda-fp32" on the same GPU in float32, "cpu-bf16" on the CPU under bf16
# autocast (issue 14: does bf16 cost DWF more than GMP? A CPU with AMX asks it without a GPU).
DEVICES: dict[str, dict[str, str]] = {
    "cpu": {"device": "cpu"},
    "cpu-bf16": {"device": "cpu", "precision": "bf16"},
    "cuda": {"device": "cuda"},
    "cuda-fp32": {"device": "cuda", "precision": "fp32"},
}
# How table.md's settings line and the plot's title name a device other than the plain CPU.
DEVICE_PHRASES = {
    "cpu-bf16": "on the CPU with bf16 autocast",
    "cuda": "on the GPU with bf16 autocast (the default on CUDA)",
    "cuda-fp32": "on the GPU in float32",
}
DEVICE_TITLES = {
    "cpu-bf16": ", CPU with bf16 autocast",
    "cuda": ", GPU with bf16 autocast",
    "cuda-fp32": ", GPU in float32",
}


def plan(model: str, mode: dict[str, Any], data: str, device: str = "cpu") -> list[Cell]:
    """The runs of a table, cheapest first within a seed (so a partial table has whole columns early)."""
    cells = []
    for seed in mode["seeds"]:
        for method in mode["methods"]:
            crs = [None] if method == "dense" else list(mode["crs"])
            cells += [Cell(model, method, cr, seed, mode["epochs"], data, device) for cr in crs]
    return cells


def dense_weights(cell: Cell) -> Path:
    """The trained dense model of the cell's model, data, seed and epochs (trained once, cached in the temp folder;
    the key holds the data spec, so another dataset never gets this one's model)."""
    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    cache = Path(tempfile.gettempdir()) / "dwf-mnist-table-dense"
    data_key = hashlib.sha256(cell.data.encode()).hexdigest()[:12]
    path = cache / f"{cell.model}-{data_key}-seed{cell.seed}-{cell.epochs}ep-{cell.device}.safetensors"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    kwargs = {"epochs": cell.epochs, "seed": cell.seed, **DEVICES[cell.device], **MODEL_SETTINGS[cell.model]}
    with tempfile.TemporaryDirectory() as tmp:
        spec = RunSpec(MODELS[cell.model], cell.data, Path(tmp), train=TrainConfig(method="dense", **kwargs))
        run(replace(spec, export_onnx=False))
        staged = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        shutil.copyfile(Path(tmp) / "model.safetensors", staged)
        os.replace(staged, path)  # two workers may train it at once; either copy is the same run
    return path


def run_cell(cell: Cell, crs: tuple[float, ...]) -> dict[str, Any]:
    """Train one cell in this (worker) process and return its row."""
    import torch

    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    torch.set_num_threads(1)
    kwargs: dict[str, Any] = {"epochs": cell.epochs, "seed": cell.seed, **DEVICES[cell.device]}
    kwargs.update(MODEL_SETTINGS[cell.model])
    if cell.method == "dense":
        kwargs.update(method="dense", frontier=list(crs))
    elif cell.method in DWF_HALF_METHODS:
        dense_epochs = cell.epochs // 2
        depth = int(cell.method.removeprefix("dwf-d")[0])
        kwargs.update(method="dwf", depth=depth, dense_epochs=dense_epochs, epochs=cell.epochs - dense_epochs)
    elif cell.method in (*DWF_FT_METHODS, *DWF_PRE_METHODS):
        depth = int(cell.method.removeprefix("dwf-d")[0])
        kwargs.update(method="dwf", depth=depth, finetune_epochs=max(1, round(0.1 * cell.epochs)))
    elif cell.method.startswith("dwf-d"):
        kwargs.update(method="dwf", depth=int(cell.method.removeprefix("dwf-d")))
    elif cell.method == DWF_DEFAULT:
        kwargs.update(method="dwf")
    else:
        kwargs.update(method=cell.method)
    if cell.cr is not None:
        kwargs["target_sparsity"] = 1.0 - 1.0 / cell.cr
    started = time.monotonic()
    weights = str(dense_weights(cell)) if cell.method in DWF_PRE_METHODS else None
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run(
            RunSpec(
                model=MODELS[cell.model],
                data=cell.data,
                out_dir=Path(tmp),
                weights=weights,
                train=TrainConfig(**kwargs),
                export_onnx=False,
            )
        )
    return {
        "cell": asdict(cell),
        "key": cell.key,
        "test_accuracy": metrics["test_accuracy"],
        "val_accuracy": metrics["val_accuracy"],
        "factorized_test_accuracy": metrics["factorized_test_accuracy"],
        "compression_ratio": metrics["compression_ratio"],
        "sparsity": metrics["sparsity"],
        "nnz": metrics["nnz"],
        "total": metrics["total"],
        "lam": metrics["lam"],
        "sparse_bytes": metrics["sparse_file"]["file_bytes"],
        "frontier": metrics.get("frontier"),
        "init": metrics["config"].get("init"),
        "depth": metrics["config"].get("depth"),
        "precision": metrics.get("precision"),
        "finetune_epochs": (metrics.get("finetune") or {}).get("epochs"),
        "dense_epochs": (metrics.get("dense_start") or {}).get("epochs", 0),
        "seconds": time.monotonic() - started,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: list[dict[str, Any]], crs: tuple[float, ...]) -> dict[str, Any]:
    """Per method and CR: mean ± std of test accuracy and achieved CR over seeds; the dense reference."""
    points: dict[str, dict[float, list[dict[str, float]]]] = {}
    dense = [r["test_accuracy"] for r in rows if r["cell"]["method"] == "dense"]
    for r in rows:
        method, cr = r["cell"]["method"], r["cell"]["cr"]
        if method == "dense":
            for p in r.get("frontier") or []:
                points.setdefault("magnitude", {}).setdefault(p["requested_compression_ratio"], []).append(
                    {"acc": p["test_accuracy"], "cr": p["compression_ratio"]}
                )
            continue
        points.setdefault(method, {}).setdefault(cr, []).append(
            {"acc": r["test_accuracy"], "cr": r["compression_ratio"]}
        )
    dense_mean = statistics.fmean(dense) if dense else None
    table: dict[str, Any] = {}
    worst_cr_error = 0.0
    for method in ROWS:
        if method not in points:
            continue
        cells = {}
        for cr in crs:
            runs = points[method].get(cr, [])
            if not runs:
                continue
            acc_mean, acc_std = _mean_std([p["acc"] for p in runs])
            cr_mean, _ = _mean_std([p["cr"] for p in runs])
            cells[str(cr)] = {"acc_mean": acc_mean, "acc_std": acc_std, "cr_mean": cr_mean, "n": len(runs)}
            worst_cr_error = max([worst_cr_error, *(abs(p["cr"] / cr - 1.0) for p in runs)])
        within = [float(cr) for cr, c in cells.items() if dense_mean is not None and c["acc_mean"] >= dense_mean - 0.01]
        table[method] = {"cells": cells, "max_cr_within_1pp": max(within) if within else None}
    return {
        "dense": {"acc_mean": dense_mean, "acc_std": _mean_std(dense)[1] if dense else None, "n": len(dense)},
        "methods": table,
        "worst_cr_error": worst_cr_error,
        "seeds": sorted({r["cell"]["seed"] for r in rows}),
    }


def markdown(header: dict[str, Any], summary: dict[str, Any], crs: tuple[float, ...]) -> str:
    """The table as Markdown: one row per method, mean ± std test accuracy (n seeds) per CR."""
    dense = summary["dense"]
    dense_text = (
        f"{100 * dense['acc_mean']:.2f} ± {100 * dense['acc_std']:.2f}% (n={dense['n']})"
        if dense["acc_mean"] is not None
        else "not run"
    )
    lines = [
        f"# {header['title']}: test accuracy (%) at compression ratio CR = weights ÷ non-zeros",
        "",
        stamp_line(header),
        "",
        *(
            ["All invocations that filled this table: " + "; ".join(f"`{c}`" for c in header["commands"]), ""]
            if len(header.get("commands", [])) > 1
            else []
        ),
        f"{header['epochs']} epochs per run"
        + (f", {DEVICE_PHRASES[header['device']]}" if header.get("device") in DEVICE_PHRASES else "")
        + "".join(f", {k} = {v}" for k, v in (header.get("model_settings") or {}).items())
        + f", every other setting at its default; seeds {', '.join(map(str, summary['seeds']))} (not every cell has "
        "every seed); mean ± std over seeds "
        f"(n = runs finished). Dense reference: {dense_text}. Every run's achieved CR is within "
        f"{100 * summary['worst_cr_error']:.1f}% of its column's (each cell's mean achieved CR is in table.json)."
        + (
            ' "+ fine-tune": DWF, then the masked fine-tuning magnitude + fine-tune gets (10% of the epochs, LR 0.01).'
            if any(m in summary["methods"] for m in DWF_FT_METHODS)
            else ""
        )
        + (
            ' "from dense": DWF started from the dense model of the same seed and epochs (twice the training).'
            if any(m in summary["methods"] for m in DWF_PRE_METHODS)
            else ""
        )
        + (
            ' "first half dense": the first half of the epochs trains the dense model, the second half DWF from it'
            " (the same budget as the other rows)."
            if any(m in summary["methods"] for m in DWF_HALF_METHODS)
            else ""
        )
        + (
            ' "the default job": DWF with nothing but the target sparsity (D = 3, or 4 from a target of 0.995, CR 200).'
            if DWF_DEFAULT in summary["methods"]
            else ""
        ),
        "",
        "| method | " + " | ".join(f"CR {cr:g}" for cr in crs) + " | largest CR within 1 pp of dense |",
        "|---|" + "---|" * (len(crs) + 1),
    ]
    for method, row in summary["methods"].items():
        texts = []
        for cr in crs:
            c = row["cells"].get(str(cr))
            if c is None:
                texts.append("–")
            else:
                spread = f" ± {100 * c['acc_std']:.2f}" if c["n"] > 1 else ""
                texts.append(f"{100 * c['acc_mean']:.2f}{spread}" + (f" (n={c['n']})" if c["n"] > 1 else ""))
        best = row["max_cr_within_1pp"]
        lines.append(f"| {ROW_TITLES[method]} | " + " | ".join(texts) + f" | {f'{best:g}' if best else '–'} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, header: dict[str, Any], summary: dict[str, Any]) -> None:
    """Accuracy vs achieved CR (log x), one line per method with ±std error bars, dense and dense − 1 pp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for method, row in summary["methods"].items():
        cells = sorted(row["cells"].values(), key=lambda c: c["cr_mean"])
        if not cells:
            continue
        style = "-o" if method.startswith("dwf") else "--s"
        ax.errorbar(
            [c["cr_mean"] for c in cells],
            [100 * c["acc_mean"] for c in cells],
            yerr=[100 * c["acc_std"] for c in cells],
            fmt=style,
            capsize=3,
            label=ROW_TITLES[method],
            linewidth=2.2 if method.startswith("dwf") else 1.2,
        )
    dense = summary["dense"]["acc_mean"]
    if dense is not None:
        ax.axhline(100 * dense, color="black", linewidth=1, label="dense")
        ax.axhline(100 * dense - 1, color="black", linewidth=1, linestyle=":", label="dense − 1 pp")
        ax.set_ylim(max(0.0, 100 * dense - 8), 100 * dense + 1)
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (weights ÷ non-zeros, log scale)")
    ax.set_ylabel("test accuracy (%)")
    where = DEVICE_TITLES.get(header.get("device") or "", "")
    ax.set_title(f"{header['title']} on MNIST, {header['epochs']} epochs{where}", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    footer = textwrap.fill(f"{header['command']} · {header['commit']} · {header['machine']} · {header['date']}", 170)
    fig.text(0.01, 0.005, footer, fontsize=5.5, color="gray")
    fig.tight_layout(rect=(0, 0.035, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out: Path, header: dict[str, Any], rows: list[dict[str, Any]], crs: tuple[float, ...]) -> None:
    """table.json, table.md and table.png from the rows finished so far."""
    summary = summarize(rows, crs)
    (out / "table.json").write_text(json.dumps({"header": header, "summary": summary}, indent=2) + "\n")
    (out / "table.md").write_text(markdown(header, summary, crs))
    plot(out / "table.png", header, summary)


README = ROOT.parent / "README.md"
README_START = "<!-- mnist-tables:start: written by `python -m benchmarks.mnist_table --readme` -->"
README_END = "<!-- mnist-tables:end -->"


# The tables README shows, in this order: (model, folder under benchmarks/results, what the title adds). The LeNet-5
# table on the current code lives with the precision runs it grew from (its cells.json records every invocation).
README_TABLES = (
    ("lenet300", "mnist-table/lenet300-full", ""),
    ("lenet300", "mnist-table/lenet300-30ep",
     ", 30 epochs for every row on today's code: the default job, 15 dense + 15 DWF epochs and GMP at the same budget"),
    ("lenet300", "mnist-table/lenet300-60ep",
     ", 60 epochs for every row: the default job, 30 dense + 30 DWF epochs and GMP at the same budget"),
    ("lenet5", "precision/lenet5-cpu-bf16",
     ", 20 epochs for every row, bf16 autocast on a CPU: the default job against the baselines on today's code "
     "(random at init: GPU tables only)"),
    ("lenet5", "mnist-table/lenet5-gpu", " on a GPU"),
    ("lenet5", "mnist-table/lenet5-gpu-gradual-cut", " on a GPU, DWF with the gradual cut (the default)"),
)  # fmt: skip


def update_readme(readme: Path = README, results: Path = ROOT / "results") -> list[str]:
    """Put every README table (its table.md and plot) between the README's markers; the tables it wrote."""
    blocks, names = [], []
    for key, folder_name, title in README_TABLES:
        folder = results / folder_name
        if not (folder / "table.md").exists():
            continue
        lines = (folder / "table.md").read_text().splitlines()
        body = re.sub(r"\n{3,}", "\n\n", "\n".join(ln for ln in lines[1:] if not ln.startswith("All invocations")))
        rel = folder.relative_to(readme.parent)
        blocks.append(
            f"**{MODEL_TITLES[key]}{title}**: test accuracy (%) at compression ratio "
            f"CR (`{rel}/`, per-run numbers in "
            f"`cells.json`)\n\n{body.strip()}\n\n![{MODEL_TITLES[key]}: accuracy vs CR]({rel}/table.png)"
        )
        names.append(str(rel))
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END)
    readme.write_text(text[: start + len(README_START)] + "\n\n" + "\n\n".join(blocks) + "\n\n" + text[end:])
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode_group = parser.add_mutually_exclusive_group(required=True)
    for name in MODES:
        mode_group.add_argument(f"--{name}", dest="mode", action="store_const", const=name)
    mode_group.add_argument(
        "--readme", dest="mode", action="store_const", const="readme", help="only copy the full tables into README"
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="lenet300")
    parser.add_argument("--data", default=f"mnist-idx:{MNIST_DIR}", help="dataset spec (default: shared MNIST)")
    parser.add_argument("--epochs", type=int, help="override the mode's epochs")
    parser.add_argument("--seeds", help="override the mode's seeds, e.g. 0,1")
    parser.add_argument("--methods", help="comma-separated subset, e.g. dense,dwf-d3,gmp")
    parser.add_argument("--crs", help="run only these of the mode's compression ratios, e.g. 100,500")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument(
        "--device",
        choices=tuple(DEVICES),
        default="cpu",
        help="cpu-bf16 (bf16 autocast on the CPU), cuda (bf16 autocast) or cuda-fp32: every worker on the one GPU "
        "(use --out)",
    )
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/mnist-table/MODEL-MODE)")
    parser.add_argument("--render", action="store_true", help="only rewrite table.md/json/png from cells.json")
    args = parser.parse_args(argv)
    if args.mode == "readme":
        print("README now shows " + ", ".join(update_readme()), flush=True)
        return 0
    mode = dict(MODES[args.mode])
    if args.epochs:
        mode["epochs"] = args.epochs
    if args.seeds:
        mode["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.methods:
        known = {"dense", DWF_DEFAULT, *DWF_METHODS, *DWF_HALF_METHODS, *DWF_FT_METHODS, *DWF_PRE_METHODS, *BASELINES}
        unknown = set(args.methods.split(",")) - known
        if unknown:
            parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
        mode["methods"] = tuple(args.methods.split(","))
    crs = tuple(mode["crs"])
    run_crs = crs
    if args.crs:
        run_crs = tuple(float(c) for c in args.crs.split(","))
        if not set(run_crs) <= set(crs):
            parser.error(f"--crs must be among the mode's ratios {', '.join(f'{c:g}' for c in crs)}")
    out = args.out or ROOT / "results" / "mnist-table" / f"{args.model}-{args.mode}"
    out.mkdir(parents=True, exist_ok=True)
    header = {
        **stamp("benchmarks.mnist_table", threads=1, argv=sys.argv[1:] if argv is None else argv),
        "title": MODEL_TITLES[args.model],
        "model": args.model,
        "mode": args.mode,
        "epochs": mode["epochs"],
        "seeds": list(mode["seeds"]),
        "crs": list(crs),
        "model_settings": MODEL_SETTINGS[args.model],
        "device": args.device,
    }
    cells_path = out / "cells.json"
    previous = json.loads(cells_path.read_text()) if cells_path.exists() else {"header": {}, "rows": []}
    rows: list[dict[str, Any]] = previous["rows"]
    if args.render:
        write_outputs(out, previous["header"], rows, crs)
        print(f"rendered {out}/table.md, table.json, table.png from {len(rows)} runs", flush=True)
        return 0
    # A table filled by several invocations (methods or seeds added later) lists every command that ran.
    before = previous["header"].get("commands") or ([previous["header"]["command"]] if previous["header"] else [])
    header["commands"] = [*before, header["command"]] if header["command"] not in before else before
    done = {r["key"] for r in rows}
    todo = [
        c
        for c in plan(args.model, mode, args.data, args.device)
        if c.key not in done and (c.cr is None or c.cr in run_crs)
    ]
    print(f"{len(todo)} runs to do, {len(done)} already in {cells_path}", flush=True)

    def keep(cell: Cell, row: dict[str, Any]) -> None:
        rows.append(row)
        cells_path.write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
        write_outputs(out, header, rows, crs)
        cr = row["compression_ratio"]
        print(
            f"{cell.method:>12} CR {cell.cr or 0:>5g} seed {cell.seed}: acc {100 * row['test_accuracy']:.2f}% "
            f"CR {cr if math.isfinite(cr) else float('inf'):.1f} ({row['seconds']:.0f}s)",
            flush=True,
        )

    failed = run_cells(todo, functools.partial(run_cell, crs=crs), args.jobs, keep)
    write_outputs(out, header, rows, crs)
    print(f"wrote {out}/table.md, table.json, table.png" + (f"; {failed} run(s) FAILED" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
