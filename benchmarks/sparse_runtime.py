"""Dense torch vs the sparse runtime (``dwf_core.load_runtime``): CSR Linear layers where they measured faster.

    python -m benchmarks.sparse_runtime                       # random 90%/99% LeNet-300-100 + a real DWF job
    python -m benchmarks.sparse_runtime --job runs/lenet300   # an existing job folder instead of training one
    python -m benchmarks.sparse_runtime --job-epochs 0        # random masks only
    python -m benchmarks.sparse_runtime --job-out runs/lenet300   # keep the trained job's folder

- LeNet-300-100, random weights, exactly 90% or 99% of every weight zeroed at random positions (per layer), saved
  as ``model.sparse.safetensors`` and read back by ``load_runtime``.
- A real DWF job on MNIST (``dwf_core.pipeline.run``, target sparsity 99%, seed 0, README's CR-100 recipe:
  ``--dense-epochs N --epochs N --finetune-epochs 3``), its ``model.sparse.safetensors`` (full shapes) and its
  ``model.compact.safetensors`` (dead units removed, fc1 reads only its live inputs).

One torch thread, batch 1 / 64 / 256. Per layer: the chooser's own measurement (median of ``--repeats``
alternating samples, each ≥ ``--sample-ms``) on the input the layer receives. Whole model: the dense model, the
runtime as chosen and every Linear forced to CSR, alternating, median of the runs over ``--seconds`` per cell.
Writes benchmarks/results/sparse-runtime/README.md and results.json, stamped with command, commit, machine, date.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.stamp import MNIST_DIR, ROOT, stamp, stamp_line
from dwf_core.config import TrainConfig
from dwf_core.export import save_sparse
from dwf_core.intake import build_model
from dwf_core.pipeline import RunSpec, run
from dwf_core.runtime import load_runtime

OUT = ROOT / "results" / "sparse-runtime"
MNIST = (1, 28, 28)
BATCHES = (1, 64, 256)


def _lenet() -> nn.Module:
    return build_model("lenet_300_100", num_classes=10, in_channels=1, input_shape=MNIST).eval()


def _random_sparse(sparsity: float, work: Path) -> Path:
    """LeNet-300-100 with random weights and exactly ``sparsity`` of each weight zeroed, as a dwf-sparse file."""
    torch.manual_seed(0)
    model = _lenet()
    with torch.no_grad():
        for layer in (model.fc1, model.fc2, model.fc3):
            flat = layer.weight.view(-1)
            flat[torch.randperm(flat.numel())[: round(sparsity * flat.numel())]] = 0
    path = work / f"random-{sparsity}" / "model.sparse.safetensors"
    save_sparse(model, path)
    return path


def _train_job(epochs: int, out: Path) -> tuple[Path, dict[str, Any]]:
    cfg = TrainConfig(target_sparsity=0.99, epochs=epochs, dense_epochs=epochs, finetune_epochs=3, seed=0, device="cpu")
    metrics = run(RunSpec("lenet_300_100", f"mnist-idx:{MNIST_DIR}", out, train=cfg))
    return out, metrics


def _whole_model(models: dict[str, nn.Module], x: torch.Tensor, seconds: float, min_runs: int = 7) -> dict[str, float]:
    """Median ms per forward of each model on ``x``, the models alternating (rotated order) until ``seconds``."""
    with torch.inference_mode():
        for model in models.values():
            model(x)
            model(x)
        start = time.perf_counter()
        for model in models.values():
            model(x)
        inner = max(1, round(0.005 / max(time.perf_counter() - start, 1e-7)))  # ≥ ~5 ms per sample of all models
        names = list(models)
        samples: dict[str, list[float]] = {name: [] for name in names}
        begin, runs = time.perf_counter(), 0
        while runs < min_runs or time.perf_counter() - begin < seconds:
            order = names[runs % len(names) :] + names[: runs % len(names)]
            for name in order:
                t0 = time.perf_counter()
                for _ in range(inner):
                    models[name](x)
                samples[name].append((time.perf_counter() - t0) * 1e3 / inner)
            runs += 1
    return {name: statistics.median(values) for name, values in samples.items()}


def _cell(dense: nn.Module, path: Path, batch: int, args: argparse.Namespace, compact: bool) -> dict[str, Any]:
    """One artifact at one batch size: the chooser's per-layer report and the whole-model latencies."""
    example = torch.randn(batch, *MNIST, generator=torch.Generator().manual_seed(batch))
    timing = {"batch_size": batch, "threads": 1, "repeats": args.repeats, "min_time_ms": args.sample_ms}
    chosen = load_runtime(_lenet(), path, example=example, **timing)
    forced = load_runtime(_lenet(), path, example=example[:1], batch_size=batch, threads=1, force="csr", repeats=1)
    models = {"dense": dense, "runtime": chosen.model, "all_csr": forced.model}
    if compact:  # the compact model as dense torch runs it: what structure alone gets
        models["compact_dense"] = load_runtime(_lenet(), path, example=example[:1], force="dense", repeats=1).model
    latency = _whole_model(models, example, args.seconds)
    with torch.inference_mode():
        reference = dense(example)
        diffs = {name: float((model(example) - reference).abs().max()) for name, model in models.items()}
    return {"batch": batch, "layers": chosen.to_dict()["layers"], "latency_ms": latency, "max_abs_diff": diffs}


def _row(
    title: str, sparse_by: str, dense: nn.Module, path: Path, args: argparse.Namespace, **extra: Any
) -> dict[str, Any]:
    compact = path.name == "model.compact.safetensors"
    weights = [m.weight for m in dense.modules() if isinstance(m, nn.Linear)]
    nonzero = sum(int(w.count_nonzero()) for w in weights)
    cells = []
    for batch in BATCHES:
        cells.append(_cell(dense, path, batch, args, compact))
        print(f"{title} [{path.name}] batch {batch}: {cells[-1]['latency_ms']}", flush=True)
    return {
        "model": title,
        "sparse_by": sparse_by,
        "artifact": path.name,
        "sparsity": 1 - nonzero / sum(w.numel() for w in weights),
        "cells": cells,
        **extra,
    }


def _speed(cell: dict[str, Any], name: str) -> str:
    ms = cell["latency_ms"]
    return f"{ms[name]:.3g} (**{ms['dense'] / ms[name]:.2f}×**)"


def markdown(header: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The whole-model table, then the per-layer table, with the stamp."""
    lines = [
        "# Sparse runtime for PyTorch: dense torch vs CSR Linear layers",
        "",
        stamp_line(header),
        "",
        "One torch thread. Whole model: median ms per forward, the models alternating; speed-ups against the "
        "dense model in bold. *runtime*: `dwf_core.load_runtime` as it chose (CSR only where the layer measured "
        "≥ 1.1× faster at that batch size); *all CSR*: every Linear forced to CSR; *compact, dense*: the compact "
        "model run by dense torch (what removing dead units alone gives). max |Δ|: against the dense model's "
        "outputs.",
        "",
        "| model | made sparse by | artifact | sparsity | batch | dense ms | compact, dense ms | runtime ms "
        "| CSR layers chosen | all CSR ms | max \\|Δ\\| |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for cell in row["cells"]:
            ms = cell["latency_ms"]
            chosen = ", ".join(layer["name"] for layer in cell["layers"] if layer["chosen"] == "csr") or "none"
            compact = _speed(cell, "compact_dense") if "compact_dense" in ms else "–"
            lines.append(
                f"| {row['model']} | {row['sparse_by']} | `{row['artifact']}` | {row['sparsity']:.2%} "
                f"| {cell['batch']} | {ms['dense']:.3g} | {compact} | {_speed(cell, 'runtime')} | {chosen} "
                f"| {_speed(cell, 'all_csr')} | {max(cell['max_abs_diff'].values()):.1e} |"
            )
    lines += [
        "",
        "## Per layer (the chooser's own measurement)",
        "",
        "Median ms per call on the input each layer receives, dense `nn.Linear` (or the compact model's "
        "`IndexedLinear`) vs `CsrLinear`; shape: the stored weight (out, in).",
        "",
        "| model | artifact | batch | layer | shape | density | dense ms | CSR ms | speed-up | chosen |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for cell in row["cells"]:
            for layer in cell["layers"]:
                lines.append(
                    f"| {row['model']} ({row['sparse_by']}) | `{row['artifact']}` | {cell['batch']} "
                    f"| {layer['name']} | {layer['shape'][0]}×{layer['shape'][1]} | {layer['density']:.2%} "
                    f"| {layer['dense_ms']:.4f} | {layer['csr_ms']:.4f} | {layer['speedup']:.2f}× | {layer['chosen']} |"
                )
    lines += ["", *header.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, help="an existing lenet_300_100 job folder (instead of training one)")
    parser.add_argument("--job-epochs", type=int, default=30, help="epochs (dense and DWF) of the job; 0: no job")
    parser.add_argument("--job-out", type=Path, help="train the job into this folder and keep it (default: a temp dir)")
    parser.add_argument("--seconds", type=float, default=2.0, help="whole-model time per batch size")
    parser.add_argument("--repeats", type=int, default=15, help="per-layer samples of each form")
    parser.add_argument("--sample-ms", type=float, default=2.0, help="minimum length of one per-layer sample")
    parser.add_argument(
        "--out", type=Path, default=OUT, help="results folder (default benchmarks/results/sparse-runtime)"
    )
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        job, metrics = (args.job, None) if args.job else (None, None)
        if job is None and args.job_epochs > 0:
            job, metrics = _train_job(
                args.job_epochs, args.job_out or work / "job"
            )  # trained with both cores, timed with one
        torch.set_num_threads(1)
        for sparsity in (0.9, 0.99):
            path = _random_sparse(sparsity, work)
            dense = load_runtime(_lenet(), path, example=torch.zeros(1, *MNIST), force="dense", repeats=1).model
            rows.append(_row("LeNet-300-100", f"random {sparsity:.0%} per layer", dense, path, args))
        if job is not None:
            if metrics is None:
                metrics = json.loads((job / "metrics.json").read_text())
            recipe = f" ({args.job_epochs} dense + {args.job_epochs} DWF epochs)" if args.job is None else ""
            how = f"DWF job{recipe}, target 99%, test acc. {metrics['test_accuracy']:.2%}"
            if args.job is not None:
                notes.append(f"The DWF job: the folder `{args.job}`, read as it was.")
            dense = load_runtime(
                _lenet(), job / "model.safetensors", example=torch.zeros(1, *MNIST), force="dense"
            ).model
            for name in ("model.sparse.safetensors", "model.compact.safetensors"):
                if (job / name).is_file():
                    rows.append(_row("LeNet-300-100", how, dense, job / name, args))
    header = {**stamp("benchmarks.sparse_runtime", threads=1), "notes": notes}
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    (out / "README.md").write_text(markdown(header, rows))
    print((out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
