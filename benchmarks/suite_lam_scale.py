"""What-if for the λ of a target: the default DWF job on model-suite pairs with the target map's λ multiplied.

    python -m benchmarks.suite_lam_scale [--scales 1,3,10] [--pairs mixer,dwcnn,...] [--sparsity 0.9,0.99] [--seed 0,1]
        [--dense-half | --trained-start] [--distill 0,0.5] [--lr default,0.1] [--finetune-epochs N] [--out DIR]

The model suite (benchmarks.model_suite) shows DWF's training leaving the monitor CR at ~1 on several pairs: the
λ that `dwf_core.defaults.lam_for_target` gives (the LeNet-300-100 map, step-scaled) did not sparsify them. This
runs the same default job with that λ times each scale (the controller and the over-pruning restart work as
usual from there) and records the sparse and factorized test accuracy, the final λ, the last training epoch's
monitor CR and the restarts. Results: benchmarks/results/suite-lam-scale/ (rows.json, README.md).

``--dense-half``: DWF starts from a trained model, as it does from uploaded trained weights (init "balanced"): the
first half of the epochs train the dense model (``dense_epochs``), the second half DWF from it — the same budget.

``--trained-start``: DWF starts from the pair's model trained densely for the suite's full epochs (cached per pair and
seed), handed over as a weights file as a user uploads a trained model (init decided on the validation split), then
trains the suite's epochs. PyTorch-module, timm and config pairs only (an ONNX graph carries its own weights).

``--distill``: the runs' ``TrainConfig.distill`` (dwf_core.distill), one cell per value; "default" leaves it to the
config (off). Without the option every cell takes the default.

``--lr``: the runs' peak LR (``TrainConfig.lr``, which skips the LR probe), one cell per value; "default" leaves it
to the config (the probe from 0.3).

``--finetune-epochs N``: every cell ends with N epochs of masked fine-tuning (``TrainConfig.finetune_epochs``); run
from a worktree with another dwf_core, it compares fine-tuning behaviours (benchmarks/results/suite-finetune-teacher).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.model_suite import MODES, dense_weights_once, trained_weights
from benchmarks.model_suite import Cell as SuiteCell
from benchmarks.pool import run_cells
from benchmarks.stamp import ROOT, stamp, stamp_line
from benchmarks.suite_models import PAIR_BY_NAME, dataset, model_for

OUT = ROOT / "results" / "suite-lam-scale"
_UNSCALED: dict[str, Any] = {}


@dataclass(frozen=True)
class Cell:
    pair: str
    scale: float
    sparsity: float
    seed: int
    dense_half: bool = False
    trained_start: bool = False
    # TrainConfig.distill; None: the config's default.
    distill: float | None = None
    distill_schedule: str = "constant"
    # TrainConfig.lr; None: the config's default (the LR probe).
    lr: float | None = None
    # TrainConfig.finetune_epochs; None: the config's default (fine-tuning only after a cut that cost accuracy).
    finetune_epochs: int | None = None

    @property
    def key(self) -> str:
        start = "/dense-half" if self.dense_half else "/trained-start" if self.trained_start else ""
        distill = "" if self.distill is None else f"/distill{self.distill:g}"
        distill += "" if self.distill_schedule == "constant" else f"-{self.distill_schedule}"
        lr = "" if self.lr is None else f"/lr{self.lr:g}"
        lr += "" if self.finetune_epochs is None else f"/ft{self.finetune_epochs}"
        return f"{self.pair}/x{self.scale:g}/{self.sparsity:g}/seed{self.seed}{start}{distill}{lr}"


def run_cell(cell: Cell, work: Path) -> dict[str, Any]:
    import torch

    import dwf_core.defaults as defaults
    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    torch.set_num_threads(1)
    # This worker process only, and from the unscaled map every time: a worker runs several cells.
    mapped = _UNSCALED.setdefault("lam_for_target", defaults.lam_for_target)
    defaults.lam_for_target = lambda *a, **kw: cell.scale * mapped(*a, **kw)
    pair = PAIR_BY_NAME[cell.pair]
    full = MODES["full"]
    data = dataset(pair.data, full["train"], full["test"], work / "data")
    suite_cell = SuiteCell(cell.pair, "dense", None, cell.seed, full["epochs"], full["train"], full["test"])
    weights = str(trained_weights(suite_cell, data, work)) if pair.source == "weights" else None
    if cell.trained_start:
        weights = str(_dense_model(cell, data, work))
    settings: dict[str, Any] = {"epochs": full["epochs"], "seed": cell.seed, "target_sparsity": cell.sparsity}
    if cell.distill is not None:
        settings["distill"] = cell.distill
    settings["distill_schedule"] = cell.distill_schedule
    if cell.lr is not None:
        settings["lr"] = cell.lr
    if cell.finetune_epochs is not None:
        settings["finetune_epochs"] = cell.finetune_epochs
    if cell.dense_half:
        settings |= {"dense_epochs": full["epochs"] // 2, "epochs": full["epochs"] - full["epochs"] // 2}
    if pair.include:
        settings["include"] = list(pair.include)
    out = work / "runs" / cell.key.replace("/", "-")
    metrics = run(RunSpec(model_for(pair, cell.seed, work), str(data), out, weights=weights,
                          train=TrainConfig(**settings), export_onnx=False))  # fmt: skip
    training = [h for h in metrics["history"] if h.get("phase") != "finetune"]
    return {
        "key": cell.key,
        "pair": cell.pair,
        "scale": cell.scale,
        "sparsity": cell.sparsity,
        "seed": cell.seed,
        "dense_half": cell.dense_half,
        "trained_start": cell.trained_start,
        "distill": metrics["config"]["distill"],
        "distill_schedule": metrics["config"]["distill_schedule"],
        "lr": metrics["lr"],
        "init": metrics["config"]["init"],
        "test_accuracy": metrics["test_accuracy"],
        "factorized_test_accuracy": metrics["factorized_test_accuracy"],
        "final_lam": metrics["lam"],
        "monitor_cr_last_epoch": training[-1]["compression_ratio"],
        "lam_restarts": len(metrics["lam_restarts"]),
        "finetune_epochs": (metrics.get("finetune") or {}).get("epochs"),
        # "finetuned" or "before" (the fine-tuning lowered validation accuracy); None: no fine-tuning, or rows from
        # before the fine-tuning chose (2026-12-04).
        "finetune_kept": (metrics.get("finetune") or {}).get("kept"),
        "finetune_val": [(metrics.get("finetune") or {}).get(k) for k in ("val_accuracy_before", "val_accuracy_after")],
    }


def _dense_model(cell: Cell, data: Path, work: Path) -> Path:
    """The pair's model trained densely for the suite's full epochs (cached per pair and seed)."""
    from dwf_core.config import TrainConfig

    pair = PAIR_BY_NAME[cell.pair]
    if pair.source.startswith("onnx"):
        raise ValueError(f"{cell.pair}: an ONNX graph carries its own weights; --trained-start needs another pair")
    epochs = MODES["full"]["epochs"]
    config = TrainConfig(method="dense", epochs=epochs, seed=100 + cell.seed,
                         include=list(pair.include) if pair.include else None)  # fmt: skip
    out = work / f"{cell.pair}-dense-seed{cell.seed}-{epochs}ep"
    return dense_weights_once(out, lambda: model_for(pair, cell.seed, work), data, config)


def _lr_text(lr: Any) -> str:
    """metrics.json's ``lr`` (the peak LR the run trained with) for the table; rows from before it was kept: –."""
    return f"{lr:g}" if isinstance(lr, (int, float)) else "–"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1,3,10")
    parser.add_argument("--pairs", default="mixer,dwcnn,vit-ts,gru,cnn1d,lenet300-trained")
    parser.add_argument("--sparsity", default="0.9", help="target sparsities, comma-separated")
    parser.add_argument("--seed", default="0", help="seeds, comma-separated")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--dense-half", action="store_true", help="DWF starts from the dense model of half the epochs")
    start.add_argument("--trained-start", action="store_true", help="DWF starts from a fully trained dense model")
    parser.add_argument("--distill", default="default", help="TrainConfig.distill values, comma-separated")
    parser.add_argument("--distill-schedule", default="constant", choices=("constant", "linear"))
    parser.add_argument("--lr", default="default", help="TrainConfig.lr values, comma-separated")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="TrainConfig.finetune_epochs of every cell")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cells = [
        Cell(
            p,
            float(k),
            float(s),
            int(seed),
            dense_half=args.dense_half,
            trained_start=args.trained_start,
            distill=None if a == "default" else float(a),
            distill_schedule=args.distill_schedule,
            lr=None if lr == "default" else float(lr),
            finetune_epochs=args.finetune_epochs,
        )
        for p in args.pairs.split(",")
        for s in args.sparsity.split(",")
        for seed in args.seed.split(",")
        for k in args.scales.split(",")
        for a in args.distill.split(",")
        for lr in args.lr.split(",")
    ]
    rows: list[dict[str, Any]] = []
    failed = run_cells(cells, functools.partial(run_cell, work=args.out / "work"), args.jobs,
                       lambda _cell, row: rows.append(row))  # fmt: skip
    header = stamp("benchmarks.suite_lam_scale", threads=1, argv=sys.argv[1:] if argv is None else argv)
    order = {c.key: i for i, c in enumerate(cells)}
    rows.sort(key=lambda r: order[r["key"]])
    (args.out / "rows.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    lines = [
        "# λ of a target × scale: the default DWF job on model-suite pairs",
        "",
        stamp_line(header),
        "",
        "The suite's data and 10 epochs"
        + (", the first 5 dense, DWF from their model in the last 5." if args.dense_half else "")
        + (": DWF from the pair's model trained densely for 10 epochs." if args.trained_start else "."),
        "",
        "| pair | target | seed | λ × | distill α | peak LR | test (sparse) | test (factorized) | final λ "
        "| monitor CR, last epoch | λ restarts |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pair']} | {r['sparsity']:g} | {r['seed']} | {r['scale']:g} | {r.get('distill', 0):g}"
            f"{'' if r.get('distill_schedule', 'constant') == 'constant' else ' ' + r['distill_schedule']} | "
            f"{_lr_text(r.get('lr'))} | {100 * r['test_accuracy']:.2f}% | "
            f"{100 * r['factorized_test_accuracy']:.2f}% | {r['final_lam']:.3g} | {r['monitor_cr_last_epoch']:.3g} | "
            f"{r['lam_restarts']} |"
        )
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
