"""The model suite: the default DWF job against the simple baselines on models nobody tuned the defaults for.

    python -m benchmarks.model_suite --smoke                 # CI: 3 pairs, tiny data, 1 epoch, 90% only
    python -m benchmarks.model_suite --full [--jobs 2]       # the table: every pair, 2 seeds, 90% and 99%
    python -m benchmarks.model_suite --full --pairs gru,bert --seeds 0    # a subset (cells already done are kept)
    python -m benchmarks.model_suite --render                # only rewrite README.md/table.png from cells.json
    python -m benchmarks.model_suite --readme [--out DIR]    # copy the table into the repo's README

Pairs (benchmarks/suite_models.py): MLP-Mixer, a small ViT via ONNX from both exporters, a ResNet with BatchNorm
via timm, a MobileNet-style depthwise CNN, a 1-D CNN, a GRU (its weights chosen by include globs), a BERT-style
encoder from a transformers config.json, and LeNet-300-100 started from uploaded trained weights.
Methods, each with **the same total epochs**: dense (method "dense"), magnitude pruning + fine-tuning
("magnitude-ft"), GMP ("gmp") and the default DWF job: nothing but the target sparsity (every other setting at its
default, as a user who gives only model, data and target gets). Target sparsities 0.9 and 0.99.
Results: benchmarks/results/model-suite/ (cells.json, README.md with the table and the command, table.png).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.pool import run_cells
from benchmarks.stamp import ROOT, stamp, stamp_line
from benchmarks.suite_models import CLASSES, PAIR_BY_NAME, PAIRS, available, dataset, dense_epochs_share, model_for

METHODS = ("dense", "magnitude-ft", "gmp", "dwf")
METHOD_TITLES = {"dense": "dense", "magnitude-ft": "magnitude + FT", "gmp": "GMP", "dwf": "DWF (default job)"}
MODES: dict[str, dict[str, Any]] = {
    "smoke": {"pairs": ("mixer", "vit-ts", "gru"), "epochs": 1, "seeds": (0,), "sparsities": (0.9,),
              "train": 256, "test": 128},
    "full": {"pairs": tuple(p.name for p in PAIRS), "epochs": 10, "seeds": (0, 1), "sparsities": (0.9, 0.99),
             "train": 5000, "test": 2000},
}  # fmt: skip
DEFAULT_OUT = ROOT / "results" / "model-suite"
# A cell where the best method is within this of chance accuracy tells nothing about DWF vs the baselines.
CHANCE_MARGIN = 0.05


@dataclass(frozen=True)
class Cell:
    pair: str
    method: str
    sparsity: float | None  # None for dense
    seed: int
    epochs: int
    n_train: int
    n_test: int
    # Settings every method of the run gets instead of its default (--optimizer/--lr), for what-if tables.
    optimizer: str | None = None
    lr: float | None = None
    # DWF's depth instead of its default (--depth; dwf_core.defaults.depth_for_target), for what-if tables.
    depth: int | None = None
    # DWF's linear LR warm-up as a fraction of its epochs (--warmup), for what-if tables.
    warmup: float | None = None
    # The share of DWF's epochs trained densely first (--dense-share; TrainConfig.dense_epochs, the total unchanged),
    # for what-if tables. Pairs that start from uploaded trained weights are left as they are.
    dense_share: float | None = None

    @property
    def key(self) -> str:
        target = "dense" if self.sparsity is None else f"{self.sparsity:g}"
        what_if = "".join(f"/{k}={v:g}" if isinstance(v, float) else f"/{k}={v}"
                          for k, v in (("optimizer", self.optimizer), ("lr", self.lr), ("depth", self.depth),
                                       ("warmup", self.warmup), ("dense_share", self.dense_share))
                          if v is not None)  # fmt: skip
        return f"{self.pair}/{self.method}/{target}/seed{self.seed}/{self.epochs}ep/{self.n_train}{what_if}"


def plan(mode: dict[str, Any]) -> list[Cell]:
    cells = []
    methods = mode.get("methods", METHODS)
    common = {"epochs": mode["epochs"], "n_train": mode["train"], "n_test": mode["test"]}
    common |= {"optimizer": mode.get("optimizer"), "lr": mode.get("lr")}
    for pair in mode["pairs"]:
        for seed in mode["seeds"]:
            if "dense" in methods:
                cells.append(Cell(pair, "dense", None, seed, **common))
            for sparsity in mode["sparsities"]:
                for method in (m for m in methods if m != "dense"):
                    depth = mode.get("depth") if method == "dwf" else None  # the baselines train at depth 1
                    warmup = mode.get("warmup") if method == "dwf" else None
                    share = mode.get("dense_share") if method == "dwf" else None
                    cells.append(Cell(pair, method, sparsity, seed, **common, depth=depth, warmup=warmup,
                                      dense_share=share))  # fmt: skip
    return cells


def trained_weights(cell: Cell, data: Path, work: Path) -> Path:
    """LeNet-300-100 trained densely (half the budget, cached per seed) — the "uploaded trained weights"."""
    from dwf_core.config import TrainConfig

    epochs = dense_epochs_share(cell.epochs)
    out = work / f"lenet300-dense-seed{cell.seed}-{epochs}ep-{cell.n_train}"
    config = TrainConfig(method="dense", epochs=epochs, seed=100 + cell.seed)
    return dense_weights_once(out, lambda: "lenet_300_100", data, config)


def dense_weights_once(out: Path, model: Callable[[], Any], data: Path, config: Any) -> Path:
    """``out``/model.safetensors, trained by one ``dwf_core.pipeline.run`` of ``model()`` with ``config`` unless a
    previous cell left it there. Several worker processes may need the same weights at once: each trains in a folder
    of its own, the first to finish moves it into place (the runs are identical: same seed, data and settings)."""
    from dwf_core.pipeline import RunSpec, run

    if not (out / "model.safetensors").exists():
        part = out.with_name(f"{out.name}.part-{os.getpid()}")
        run(RunSpec(model(), str(data), part, train=config, export_onnx=False))
        try:
            part.rename(out)
        except OSError:  # another process got there first
            shutil.rmtree(part, ignore_errors=True)
    return out / "model.safetensors"


def run_cell(cell: Cell, work: Path) -> dict[str, Any]:
    """Train one cell in this process (one torch thread) and return its row."""
    import torch

    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    torch.set_num_threads(1)
    pair = PAIR_BY_NAME[cell.pair]
    work.mkdir(parents=True, exist_ok=True)
    data = dataset(pair.data, cell.n_train, cell.n_test, work / "data")
    weights = str(trained_weights(cell, data, work)) if pair.source == "weights" else None
    settings: dict[str, Any] = {"epochs": cell.epochs, "seed": cell.seed, "method": cell.method}
    if cell.method == "dwf":
        settings.pop("method")  # the default job: DWF with nothing but the target
        if cell.depth is not None:
            settings["depth"] = cell.depth
        if cell.warmup is not None:
            settings["warmup_epochs"] = cell.warmup * cell.epochs
        if cell.dense_share is not None and pair.source != "weights":
            settings["dense_epochs"] = round(cell.dense_share * cell.epochs)
            settings["epochs"] = cell.epochs - settings["dense_epochs"]
    if cell.sparsity is not None:
        settings["target_sparsity"] = cell.sparsity
    if pair.include:
        settings["include"] = list(pair.include)
    settings |= {k: v for k, v in (("optimizer", cell.optimizer), ("lr", cell.lr)) if v is not None}
    out = work / "runs" / cell.key.replace("/", "-")
    # A cell runs only when cells.json lacks it, so a folder left here is a deleted row's or a killed run's, possibly
    # from older code: its checkpoints would be resumed and give the old result. Every cell trains from scratch.
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    spec = RunSpec(model_for(pair, cell.seed, work), str(data), out, weights=weights,
                   train=TrainConfig(**settings), export_onnx=False)  # fmt: skip
    metrics = run(spec)
    return {
        "key": cell.key,
        **asdict(cell),
        "test_accuracy": metrics["test_accuracy"],
        "sparsity_achieved": metrics["sparsity"],
        "compression_ratio": metrics["compression_ratio"],
        "trainable_share": metrics["parameters"]["trainable_share"],
        "factorized_share": metrics["parameters"]["factorized_share"],
        "weights_total": metrics["total"],
        "init": metrics["config"]["init"],
        "lr": metrics.get("lr"),
        "max_grad_norm": metrics.get("max_grad_norm"),
        "divergence_restarts": len(metrics.get("divergence_restarts") or []),
        # The LR probe (dwf_core.lr_probe): settings tried and the index of the one trained with.
        "lr_probe_rungs": len((metrics.get("lr_probe") or {}).get("rungs") or []),
        "lr_probe_chosen": (metrics.get("lr_probe") or {}).get("chosen"),
        "lam_restarts": len(metrics.get("lam_restarts") or []),
        "finetune_epochs": (metrics.get("finetune") or {}).get("epochs"),
        "cut": (metrics.get("cut") or {}).get("mode"),
        # Distillation's α (on by default from uploaded trained weights since 2026-12-04); None: off.
        "distill": (metrics.get("distill") or {}).get("alpha"),
        "non_finite": any(not math.isfinite(h.get("train_loss", 0.0)) for h in metrics.get("history") or []),
        "seconds": time.monotonic() - started,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean test accuracy per (pair, method, sparsity), and where the default DWF job stands against the best of
    magnitude + FT and GMP."""
    cells: dict[tuple[str, str, float | None], list[float]] = {}
    for r in rows:
        cells.setdefault((r["pair"], r["method"], r["sparsity"]), []).append(r["test_accuracy"])
    table: dict[str, dict[str, Any]] = {}
    wins: dict[str, list[bool]] = {}
    for (pair, method, sparsity), accs in cells.items():
        column = "dense" if sparsity is None else f"{method}@{sparsity:g}"
        table.setdefault(pair, {})[column] = {"mean": _mean(accs), "n": len(accs)}
    at_chance: dict[str, list[str]] = {}
    for pair, columns in table.items():
        chance = 1.0 / CLASSES[PAIR_BY_NAME[pair].data]
        for sparsity in sorted({float(c.split("@")[1]) for c in columns if "@" in c}):
            dwf = columns.get(f"dwf@{sparsity:g}")
            best = [columns[c]["mean"] for c in (f"magnitude-ft@{sparsity:g}", f"gmp@{sparsity:g}") if c in columns]
            if dwf and best:
                columns[f"dwf@{sparsity:g}"]["vs_best"] = dwf["mean"] - max(best)
                if max(dwf["mean"], *best) <= chance + CHANCE_MARGIN:  # no method learned: says nothing about DWF
                    columns[f"dwf@{sparsity:g}"]["at_chance"] = True
                    at_chance.setdefault(f"{sparsity:g}", []).append(pair)
                    continue
                wins.setdefault(f"{sparsity:g}", []).append(dwf["mean"] >= max(best))
    return {
        "table": table,
        "wins": {s: {"won": sum(w), "of": len(w)} for s, w in wins.items()},
        "at_chance": at_chance,
    }


def _what_if_phrase(key: str, value: Any) -> str:
    if key == "depth":
        return f"DWF ran at depth {value}"
    if key == "warmup":
        return f"DWF warmed its LR up over {value:g} of its epochs"
    if key == "dense_share":
        return f"DWF trained the plain model for {value:g} of its epochs first (the same total)"
    return f"every method ran with {key} {value}"


def markdown(header: dict[str, Any], summary: dict[str, Any], sparsities: tuple[float, ...]) -> str:
    lines = [
        "# Model suite: the default DWF job vs magnitude + fine-tuning and GMP at the same total epochs",
        "",
        stamp_line(header),
        "",
        *(
            [
                "**What-if table:** "
                + "; ".join(_what_if_phrase(k, v) for k, v in what_if.items())
                + " instead of the default.",
                "",
            ]
            if (what_if := {k: v for k, v in (header.get("what_if") or {}).items() if v is not None})
            else []
        ),
        f"{header['epochs']} epochs for every method; seeds {', '.join(map(str, header['seeds']))}; test accuracy, "
        "mean over the seeds (n = seeds that finished). ✓: the DWF job is at least as accurate as the best of "
        "magnitude + FT and GMP at that sparsity.",
        "",
    ]
    head = ["pair", "dense"]
    for s in sparsities:
        head += [f"{METHOD_TITLES[m]} {100 * s:g}%" for m in METHODS[1:]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pair in [p.name for p in PAIRS]:
        columns = summary["table"].get(pair)
        if not columns:
            continue
        row = [PAIR_BY_NAME[pair].title, _fmt(columns.get("dense"))]
        for s in sparsities:
            for m in METHODS[1:]:
                cell = columns.get(f"{m}@{s:g}")
                mark = ""
                if m == "dwf" and cell and cell.get("at_chance"):
                    mark = " (every method at chance)"
                elif m == "dwf" and cell and "vs_best" in cell:
                    mark = f" {'✓' if cell['vs_best'] >= 0 else '✗'} ({100 * cell['vs_best']:+.1f} pp)"
                row.append(_fmt(cell) + mark)
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for s, w in sorted(summary["wins"].items()):
        chance = summary.get("at_chance", {}).get(s, [])
        lines.append(f"- At {100 * float(s):g}% sparsity the default DWF job matches or beats the best baseline on "
                     f"{w['won']} of {w['of']} pairs"
                     + (f" (not counted: {', '.join(chance)}, where every method stayed within "
                        f"{100 * CHANCE_MARGIN:g} pp of chance)." if chance else "."))  # fmt: skip
    commands = header.get("commands") or [header["command"]]
    lines += ["", "Made by these commands, in this order (cells already done are kept):", ""]
    lines += [f"- `{c}`" for c in commands]
    return "\n".join(lines) + "\n"


def _fmt(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "—"
    n = f" (n={cell['n']})" if cell["n"] > 1 else ""
    return f"{100 * cell['mean']:.2f}%{n}"


def plot(path: Path, summary: dict[str, Any], sparsities: tuple[float, ...]) -> None:
    """DWF minus the best baseline, per pair and sparsity (bars; above zero DWF wins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [p.name for p in PAIRS if p.name in summary["table"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(pairs)), 3.6))
    width = 0.8 / max(1, len(sparsities))
    for i, s in enumerate(sparsities):
        cells = [summary["table"][p].get(f"dwf@{s:g}") or {} for p in pairs]
        # A cell where every method stayed at chance says nothing: no bar.
        values = [math.nan if c.get("at_chance") else 100 * c.get("vs_best", math.nan) for c in cells]
        ax.bar([k + i * width for k in range(len(pairs))], values, width, label=f"{100 * s:g}% sparsity")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([k + width * (len(sparsities) - 1) / 2 for k in range(len(pairs))], pairs, rotation=30, ha="right")
    ax.set_ylabel("DWF − best baseline (pp)")
    ax.set_title("Default DWF job vs the best of magnitude + FT and GMP (same epochs; no bar: all at chance)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = summarize(rows)
    sparsities = tuple(header["sparsities"])
    (out / "README.md").write_text(markdown(header, summary, sparsities))
    (out / "table.json").write_text(json.dumps({"header": header, "summary": summary}, indent=1) + "\n")
    plot(out / "table.png", summary, sparsities)
    return summary


README = ROOT.parent / "README.md"
README_START = "<!-- model-suite:start: written by `python -m benchmarks.model_suite --readme` -->"
README_END = "<!-- model-suite:end -->"


def update_readme(readme: Path = README, results: Path = DEFAULT_OUT) -> None:
    """Put the suite's table (its README.md without the title) and plot between the README's markers."""
    table = (results / "README.md").read_text().split("\n", 2)[2].strip()
    plot_path = (results / "table.png").relative_to(readme.parent)
    block = f"{README_START}\n{table}\n\n![model suite: DWF minus the best baseline]({plot_path})\n{README_END}"
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + block + text[end:])


def _names(parser: argparse.ArgumentParser, text: str, known: Iterable[str], what: str) -> tuple[str, ...]:
    """A comma-separated option's names, or a usage error naming the unknown ones."""
    names = tuple(text.split(","))
    unknown = set(names) - set(known)
    if unknown:
        parser.error(f"unknown {what}: {', '.join(sorted(unknown))}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    for name in MODES:
        group.add_argument(f"--{name}", dest="mode", action="store_const", const=name)
    group.add_argument("--render", dest="mode", action="store_const", const="render")
    group.add_argument("--readme", dest="mode", action="store_const", const="readme")
    parser.add_argument("--pairs", help="comma-separated subset of the mode's pairs")
    parser.add_argument("--seeds", help="override the mode's seeds, e.g. 0")
    parser.add_argument("--epochs", type=int, help="override the mode's epochs")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--sparsities", help="override the mode's target sparsities, e.g. 0.9")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), help="what-if: every method uses this optimizer")
    parser.add_argument("--lr", type=float, help="what-if: every method uses this peak LR")
    parser.add_argument("--depth", type=int, help="what-if: DWF uses this depth instead of its default")
    parser.add_argument("--warmup", type=float, help="what-if: DWF warms its LR up over this fraction of its epochs")
    parser.add_argument(
        "--dense-share",
        type=float,
        help="what-if: DWF trains the plain model for this share of its epochs first (same total)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/model-suite[-smoke])")
    args = parser.parse_args(argv)
    if args.mode == "readme":
        results = (args.out or DEFAULT_OUT).resolve()
        update_readme(results=results)
        print(f"README now shows {results / 'README.md'}")
        return 0
    out = args.out or (DEFAULT_OUT if args.mode in ("full", "render") else DEFAULT_OUT.with_name("model-suite-smoke"))
    out.mkdir(parents=True, exist_ok=True)
    cells_path = out / "cells.json"
    previous = json.loads(cells_path.read_text()) if cells_path.exists() else {"header": {}, "rows": []}
    rows: list[dict[str, Any]] = previous["rows"]
    if args.mode == "render":
        write_outputs(out, previous["header"], rows)
        print(f"rendered {out}/README.md from {len(rows)} runs")
        return 0
    mode = dict(MODES[args.mode])
    if args.pairs:
        mode["pairs"] = _names(parser, args.pairs, PAIR_BY_NAME, "pairs")
    if args.seeds:
        mode["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.epochs:
        mode["epochs"] = args.epochs
    if args.methods:
        mode["methods"] = _names(parser, args.methods, METHODS, "methods")
    if args.sparsities:
        mode["sparsities"] = tuple(float(x) for x in args.sparsities.split(","))
    what_if = {"optimizer": args.optimizer, "lr": args.lr, "depth": args.depth, "warmup": args.warmup,
               "dense_share": args.dense_share}  # fmt: skip
    mode |= what_if
    skipped = [p for p in mode["pairs"] if not available(PAIR_BY_NAME[p])]
    mode["pairs"] = tuple(p for p in mode["pairs"] if p not in skipped)
    header = {
        **stamp("benchmarks.model_suite", threads=1, argv=sys.argv[1:] if argv is None else argv),
        "mode": args.mode,
        "epochs": mode["epochs"],
        "seeds": list(mode["seeds"]),
        "sparsities": list(mode["sparsities"]),
        "what_if": what_if,
        "train": mode["train"],
        "test": mode["test"],
    }
    before = previous["header"].get("commands") or []
    header["commands"] = [*before, header["command"]] if header["command"] not in before else before
    done = {r["key"] for r in rows}
    todo = [c for c in plan(mode) if c.key not in done]
    print(f"{len(todo)} runs to do, {len(done)} already in {cells_path}"
          + (f"; skipped (packages missing): {', '.join(skipped)}" if skipped else ""), flush=True)  # fmt: skip
    work = out / "work"

    def keep(cell: Cell, row: dict[str, Any]) -> None:
        rows.append(row)
        cells_path.write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
        write_outputs(out, header, rows)
        print(f"{cell.key}: acc {100 * row['test_accuracy']:.2f}% sparsity "
              f"{100 * row['sparsity_achieved']:.2f}% ({row['seconds']:.0f}s)", flush=True)  # fmt: skip

    failed = run_cells(todo, functools.partial(run_cell, work=work), args.jobs, keep)
    summary = write_outputs(out, header, rows) if rows else {"wins": {}}
    for s, w in sorted(summary["wins"].items()):
        print(f"sparsity {s}: DWF ≥ best baseline on {w['won']} of {w['of']} pairs")
    print(f"wrote {out}/README.md, table.json, table.png" + (f"; {failed} run(s) FAILED" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
