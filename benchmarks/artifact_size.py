"""Artifact size: dense safetensors vs the dwf-sparse file vs the bound nnz·4 + P/8, after magnitude pruning.

    python -m benchmarks.artifact_size [--train 20000] [--epochs 2] [--sparsities 0.9 0.98 0.99 0.995]

LeNet-300-100 and LeNet-5 (``dwf_core.intake.build_model``) are trained dense for a short while on an MNIST
subset (SGD, so the weights have a trained magnitude distribution rather than an init's), then pruned to each
sparsity S with one global magnitude cut over all Linear/Conv weights (``dwf_core.collapse.target_threshold``;
biases kept). Each pruned model is written with ``save_dense`` and ``save_sparse``; the bound is
``SparseFileStats.bound_bytes`` = Σ over ALL tensors (biases included) of nnz·4 + ⌈numel/8⌉.

Writes benchmarks/results/artifact-size.{json,md}.
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
from torch import nn

from dwf_core.collapse import target_threshold
from dwf_core.data import load_dataset
from dwf_core.export import save_dense, save_sparse
from dwf_core.factorize import select_parameters
from dwf_core.intake import build_model

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
MNIST = "mnist-idx:" + str(REPO.parent / "shared" / "data" / "mnist")
MODELS = ("lenet_300_100", "lenet5")
SPARSITIES = (0.9, 0.98, 0.99, 0.995)


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(1000), y.split(1000), strict=True)
        )
    model.train()
    return correct / max(len(y), 1)


def train_dense(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int = 0, batch: int = 128
) -> None:
    """Plain SGD (lr 0.05, momentum 0.9) for ``epochs`` passes over (x, y)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()  # type: ignore[no-untyped-call]
            opt.step()


def prune_rows(
    model: nn.Module,
    sparsities: tuple[float, ...] = SPARSITIES,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """For each S: prune a copy of ``model`` by a global magnitude cut and measure its artifact sizes."""
    names = select_parameters(model)  # the weights of every Linear/Conv layer
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    threshold_input = [state[n] for n in names]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in sparsities:
            t = target_threshold(threshold_input, s)
            pruned = {k: (v.masked_fill(v.abs() < t, 0.0) if k in names else v.clone()) for k, v in state.items()}
            model.load_state_dict(pruned)
            dense_bytes = save_dense(model, Path(tmp) / "dense.safetensors")
            stats = save_sparse(model, Path(tmp) / "sparse.safetensors")
            weight_numel = sum(pruned[n].numel() for n in names)
            weight_nnz = sum(int(pruned[n].count_nonzero()) for n in names)
            row: dict[str, Any] = {
                "target_sparsity": s,
                "threshold": t,
                "weight_sparsity": 1 - weight_nnz / weight_numel,
                "nnz": stats.nnz,
                "numel": stats.numel,
                "dense_bytes": dense_bytes,
                "sparse_bytes": stats.file_bytes,
                "bound_bytes": stats.bound_bytes,
                "sparse_over_bound": stats.file_bytes / stats.bound_bytes,
                "dense_over_sparse": dense_bytes / stats.file_bytes,
                "encodings": {i.name: i.encoding for i in stats.tensors},
            }
            if test is not None:
                row["test_accuracy"] = _accuracy(model, *test)
            rows.append(row)
    model.load_state_dict(state)
    return rows


def measure(
    model_name: str,
    *,
    sparsities: tuple[float, ...] = SPARSITIES,
    data: Any | None = None,
    train_samples: int = 20000,
    epochs: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """One model: train it dense on ``data`` (a DatasetBundle; None: keep the random init), then prune rows."""
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=10, input_shape=(1, 28, 28))
    result: dict[str, Any] = {"model": model_name, "parameters": sum(p.numel() for p in model.parameters())}
    test = None
    if data is not None:
        started = time.monotonic()
        n = min(train_samples, len(data.train))
        train_dense(model, data.train.x[:n], data.train.y[:n], epochs=epochs, seed=seed)
        test = (data.test.x, data.test.y)
        result["weights"] = f"trained dense: {epochs} epochs of SGD on {n} MNIST training images"
        result["train_seconds"] = time.monotonic() - started
        result["dense_test_accuracy"] = _accuracy(model, *test)
    else:
        result["weights"] = "random init (torch default for Linear/Conv), untrained"
    result["rows"] = prune_rows(model, sparsities, test)
    return result


def _markdown(header: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [
        "# Artifact size after global magnitude pruning: dense safetensors vs dwf-sparse vs the bound",
        "",
        f"Command: `{header['command']}` · commit {header['commit']} · {header['machine']} · {header['date']}",
        "",
        "Bound = Σ over all tensors (biases included) of nnz·4 + ⌈numel/8⌉ bytes (`SparseFileStats.bound_bytes`). "
        "Sparsity S is the global magnitude cut over Linear/Conv weights (biases kept dense). "
        "Targets (issue 4): sparse ≤ 1.15× bound; at S = 0.99, dense ≥ 30× sparse.",
        "",
        "| model | weights | S | weight sparsity | test acc | nnz / params | dense B | sparse B | bound B | "
        "sparse ÷ bound | dense ÷ sparse |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        acc = res.get("dense_test_accuracy")
        what = "trained" if acc is not None else "random init"
        for r in res["rows"]:
            test = f"{100 * r['test_accuracy']:.2f}%" if "test_accuracy" in r else "—"
            lines.append(
                f"| {res['model']} | {what} | {r['target_sparsity']} | {100 * r['weight_sparsity']:.2f}% | {test} | "
                f"{r['nnz']} / {r['numel']} | {r['dense_bytes']} | {r['sparse_bytes']} | {r['bound_bytes']} | "
                f"{r['sparse_over_bound']:.3f}× | {r['dense_over_sparse']:.1f}× |"
            )
    lines.append("")
    for res in results:
        acc = res.get("dense_test_accuracy")
        lines.append(
            f"- {res['model']} ({res['parameters']} parameters): {res['weights']}"
            + (f"; dense test accuracy {100 * acc:.2f}% before pruning (no fine-tuning after)." if acc else ".")
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=20000, help="MNIST training images used (0: random init)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    parser.add_argument("--data", default=MNIST)
    args = parser.parse_args()
    data = None
    if args.train > 0:
        data = load_dataset(args.data)
    results = []
    for name in MODELS:
        res = measure(name, sparsities=tuple(args.sparsities), data=data, train_samples=args.train, epochs=args.epochs)
        results.append(res)
        for r in res["rows"]:
            print(
                f"{name} S={r['target_sparsity']}: dense {r['dense_bytes']} sparse {r['sparse_bytes']} "
                f"bound {r['bound_bytes']} ({r['sparse_over_bound']:.3f}× bound, "
                f"{r['dense_over_sparse']:.1f}× smaller)",
                flush=True,
            )
    header = {
        "command": ("python -m benchmarks.artifact_size " + " ".join(sys.argv[1:])).strip(),
        "commit": _commit(),
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}",
        "date": dt.date.today().isoformat(),
        "settings": vars(args),
    }
    out = ROOT / "results" / "artifact-size"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"header": header, "results": results}, indent=2))
    out.with_suffix(".md").write_text(_markdown(header, results))


if __name__ == "__main__":
    main()
