"""How much masked fine-tuning after DWF's cut buys: one DWF run, cut at several CRs, fine-tuned several ways.

    python -m benchmarks.finetune_sweep                       # LeNet-300-100, D = 3, λ = 2e-4, 60 epochs
    python -m benchmarks.finetune_sweep --epochs 30 --lam 3e-4

DWF's penalty λ·Σ|w|^{2/D} shrinks the weights it keeps as well as those it removes; fine-tuning the survivors
with the zeros fixed (what ``--finetune-epochs`` and the auto fine-tuning do) removes that bias. The trained model
is cut at each ``--crs`` (global magnitude quantile, as ``--target-sparsity``), then each (epochs, LR) of the grid
fine-tunes a copy of the cut with ``dwf_core.baselines.run.finetune_collapsed``. One torch thread. Writes
finetune-sweep.json and .md under --out, stamped with the command, commit, machine and date.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.stamp import MNIST_DIR, ROOT, stamp, stamp_line

OUT = ROOT / "results" / "lenet300-record-attempts"
GRID = ((10, 0.01), (20, 0.01), (20, 0.03), (20, 0.1))


def sweep(depth: int, lam: float, epochs: int, crs: list[float], seed: int) -> dict[str, Any]:
    """Train once, then the cut and every fine-tuning of the grid at each CR; test accuracies."""
    from dataclasses import replace

    import torch

    from dwf_core.baselines.run import finetune_collapsed
    from dwf_core.collapse import collapse_and_verify
    from dwf_core.config import TrainConfig
    from dwf_core.evaluate import accuracy_of, predict_logits
    from dwf_core.pipeline import RunSpec, prepare
    from dwf_core.train import Trainer

    torch.set_num_threads(1)
    config = TrainConfig(depth=depth, lam=lam, epochs=epochs, seed=seed)
    prepared = prepare(RunSpec("lenet_300_100", f"mnist-idx:{MNIST_DIR}", out_dir=Path("unused"), train=config))
    data = prepared.data
    trained = Trainer(prepared.model, data.train, data.val, prepared.config).fit()

    def test_accuracy(model: torch.nn.Module) -> float:
        return accuracy_of(predict_logits(model, data.test.x), data.test.y)

    rows = []
    for cr in crs:
        cut = collapse_and_verify(trained.model, data.val, "target", target_sparsity=1 - 1 / cr)
        rows.append({"cr": cr, "finetune_epochs": 0, "lr": None, "test_accuracy": test_accuracy(cut.model)})
        for ft_epochs, lr in GRID:
            ft_cfg = replace(prepared.config, finetune_epochs=ft_epochs)
            _, after, _ = finetune_collapsed(cut, data.train, data.val, ft_cfg, lr=lr)
            rows.append(
                {
                    "cr": cr,
                    "finetune_epochs": ft_epochs,
                    "lr": lr,
                    "test_accuracy": test_accuracy(after.model),
                    "compression_ratio": after.report.compression_ratio,
                }
            )
            print(rows[-1], flush=True)
    return {"factorized_test_accuracy": test_accuracy(trained.model), "rows": rows}


def markdown(header: dict[str, Any], result: dict[str, Any]) -> str:
    """A table: one row per CR and fine-tuning setting."""
    lines = [
        f"# DWF D = {header['depth']}, λ = {header['lam']:g}, {header['epochs']} epochs (LeNet-300-100, seed "
        f"{header['seed']}): test accuracy after the cut, with and without masked fine-tuning",
        "",
        stamp_line(header),
        "",
        f"Factorized model before any cut: {100 * result['factorized_test_accuracy']:.2f}%.",
        "",
        "| CR | fine-tuning | test accuracy |",
        "|---|---|---|",
    ]
    for row in result["rows"]:
        epochs, lr = row["finetune_epochs"], row["lr"]
        how = f"{epochs} epochs, LR {lr:g}" if epochs else "none (the cut alone)"
        lines.append(f"| {row['cr']:g} | {how} | {100 * row['test_accuracy']:.2f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--lam", type=float, default=2e-4)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--crs", default="100,50", help="comma-separated compression ratios to cut at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    crs = [float(c) for c in args.crs.split(",")]
    header = {
        **stamp("benchmarks.finetune_sweep", threads=1),
        **{"depth": args.depth, "lam": args.lam, "epochs": args.epochs, "seed": args.seed},
    }
    result = sweep(args.depth, args.lam, args.epochs, crs, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"finetune-sweep-d{args.depth}-lam{args.lam:g}-{args.epochs}ep"
    (args.out / f"{name}.json").write_text(json.dumps({"header": header, **result}, indent=1) + "\n")
    text = markdown(header, result)
    (args.out / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
