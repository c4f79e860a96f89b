"""Dense vs compact inference: MACs, parameters, ONNX bytes and onnxruntime CPU latency (one thread, batch 1 and 64).

    python -m benchmarks.inference              # all four models (a few minutes on 2 cores)
    python -m benchmarks.inference --readme     # put the latest table into README.md

- LeNet-300-100 and LeNet-5: a real DWF job on MNIST (``dwf_core.pipeline.run``, ``--target-sparsity 0.99``,
  seed 0): the job's own ``model.onnx`` and ``model.compact.onnx`` are timed again, longer. LeNet-300-100 runs
  README's best CR-100 recipe (``--dense-epochs 30 --epochs 30 --finetune-epochs 3``, ``--epochs-lenet300``
  sets both epoch counts); LeNet-5 a short job (``--epochs-lenet5``).
- VGG-16 and ResNet-18 (the zoo's CIFAR versions, 3×32×32, 10 classes): random weights, since training them on
  CPU takes hours; made sparse by per-layer magnitude masks, unstructured (90%, 99% of every conv/Linear weight)
  and, to show what structure buys, by zeroing the 50% of each conv's filters with the smallest L2 norm. Timing
  only: their accuracy means nothing.

Latency: ``dwf_core.inference.onnx_latency``, the two models alternating in one process, median of the runs
(at least 5, then for ``--seconds`` per batch size). Writes benchmarks/results/inference/README.md and
results.json, stamped with the command, commit, machine and date.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from benchmarks.stamp import MNIST_DIR, ROOT, stamp, stamp_line
from dwf_core.compact import load_compact, write_compact
from dwf_core.compact.quantize import INT8_ONNX, quantize_compact
from dwf_core.config import TrainConfig
from dwf_core.export import export_onnx
from dwf_core.inference import measure
from dwf_core.intake import build_model
from dwf_core.pipeline import RunSpec, run

OUT = ROOT / "results" / "inference"
README = ROOT.parent / "README.md"
README_START = "<!-- inference:start: written by `python -m benchmarks.inference --readme` -->"
README_END = "<!-- inference:end -->"
CIFAR = (3, 32, 32)


def _dwf_row(name: str, title: str, epochs: int, seconds: float, work: Path, **settings: Any) -> dict[str, Any]:
    """One real DWF job on MNIST, then its dense and compact ONNX models timed for ``seconds`` per batch size."""
    out = work / name
    cfg = TrainConfig(target_sparsity=0.99, epochs=epochs, seed=0, device="cpu", **settings)
    recipe = f"{epochs} epochs" + (f" after {cfg.dense_epochs} dense" if cfg.dense_epochs else "")
    metrics = run(RunSpec(name, f"mnist-idx:{MNIST_DIR}", out, train=cfg))
    dense = build_model(name, num_classes=10, in_channels=1, input_shape=(1, 28, 28))
    dense.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    models: dict[str, tuple[nn.Module | None, Path]] = {"dense": (dense.eval(), out / "model.onnx")}
    if (out / "model.compact.safetensors").is_file():
        fresh = build_model(name, num_classes=10, in_channels=1, input_shape=(1, 28, 28))
        models["compact"] = (load_compact(fresh, out / "model.compact.safetensors"), out / "model.compact.onnx")
    if (out / INT8_ONNX).is_file():
        models["compact_int8"] = (None, out / INT8_ONNX)
    example = torch.randn(16, 1, 28, 28)
    return {
        "model": title,
        "sparse_by": f"DWF job, {recipe}, target 99%",
        "sparsity": metrics["sparsity"],
        "compression_ratio": metrics["compression_ratio"],
        "test_accuracy": metrics["test_accuracy"],
        "compact": metrics["compact"],
        "inference": measure(models, example, seconds=seconds),
    }


def _magnitude(model: nn.Module, sparsity: float) -> None:
    """Zero the smallest ``sparsity`` of every conv/Linear weight (per layer)."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                k = int(sparsity * layer.weight.numel())
                cut = layer.weight.abs().flatten().kthvalue(k).values
                layer.weight.mul_(layer.weight.abs() > cut)


def _filters(model: nn.Module, fraction: float) -> None:
    """Zero the ``fraction`` of each conv's filters with the smallest L2 norm (the first conv keeps all)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for conv in convs[1:]:
            norms = conv.weight.flatten(1).norm(dim=1)
            conv.weight[norms.argsort()[: int(fraction * len(norms))]] = 0


def _cifar_row(name: str, title: str, how: str, seconds: float, work: Path) -> dict[str, Any]:
    """A random-weight CIFAR model made sparse by ``how`` ("unstructured-0.9", "filters-0.5"…), both models timed."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, input_shape=CIFAR).eval()
    kind, amount = how.split("-")
    (_magnitude if kind == "unstructured" else _filters)(model, float(amount))
    out = work / f"{name}-{how}"
    example = torch.randn(16, *CIFAR)
    assert export_onnx(model, example[:2], out / "model.onnx").exported
    compact = write_compact(model, example, out, metadata={"model": name})
    models: dict[str, tuple[nn.Module | None, Path]] = {"dense": (model, out / "model.onnx")}
    if compact.result is not None and "model.compact.onnx" in compact.files:
        models["compact"] = (compact.result.model, compact.files["model.compact.onnx"])
        # Calibrated on random inputs: the int8 model is here for its latency, its accuracy means nothing.
        noise = torch.randn(64, *CIFAR)
        compact.info["int8"], int8 = quantize_compact(models["compact"][1], noise, noise[:0], torch.zeros(0))
        if int8 is not None:
            models["compact_int8"] = (None, int8)
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    nonzero = sum(int(m.weight.count_nonzero()) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    label = {"unstructured": "magnitude mask per layer, unstructured", "filters": "50% of each conv's filters zeroed"}
    return {
        "model": title,
        "sparse_by": f"{label[kind]} ({float(amount):.0%}), random weights"
        if kind == "unstructured"
        else label[kind] + ", random weights",
        "sparsity": 1 - nonzero / total,
        "compression_ratio": total / max(1, nonzero),
        "test_accuracy": None,
        "compact": compact.info,
        "inference": measure(models, example, seconds=seconds),
    }


def _fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _chain(inf: dict[str, Any], get: Any, fmt: Any) -> str:
    """ "dense → compact → int8" for one quantity, the models that were measured."""
    return " → ".join(fmt(get(inf[m])) for m in ("dense", "compact", "compact_int8") if m in inf)


def _latency(inf: dict[str, Any], batch: str) -> str:
    text = _chain(inf, lambda m: m["latency_ms"][batch], _fmt_ms)
    ups = [f"{inf[key][batch]:.2f}×" for key in ("speedup", "int8_speedup") if key in inf]
    return f"{text} (**{' / '.join(ups)}**)" if ups else text


def _accuracy(row: dict[str, Any]) -> str:
    if row["test_accuracy"] is None:
        return "–"
    int8 = (row["compact"] or {}).get("int8") or {}
    tail = f" → {int8['test_accuracy']:.2%}" if int8.get("test_accuracy") is not None else ""
    return f"{row['test_accuracy']:.2%}{tail}"


def markdown(header: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The results table with its stamp."""
    lines = [
        "# Dense vs compact inference",
        "",
        stamp_line(header),
        "",
        f"{header['runtime']}, one thread (intra- and inter-op), median of ≥ 5 runs per batch size, the models "
        "alternating. MACs per sample (matmuls and convolutions, zeros included: what a dense runtime executes). "
        "Compact: `model.compact.onnx`, the sparse model without its dead units (`dwf_core.compact`); int8: "
        "`model.compact.int8.onnx` (static quantization). Speed-ups in bold: compact / int8 against dense.",
        "",
        "| model | made sparse by | sparsity (CR) | test acc. (float → int8) | MACs dense → compact "
        "| params dense → compact | ONNX bytes dense → compact → int8 | batch 1 ms dense → compact → int8 "
        "| batch 64 ms dense → compact → int8 | max \\|Δ\\| |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        inf, compact = row["inference"], row["compact"]
        sparsity = f"{row['sparsity']:.2%} ({row['compression_ratio']:.0f}×)"
        if "compact" not in inf:
            reason = compact.get("skipped", "no compact ONNX")
            lines.append(f"| {row['model']} | {row['sparse_by']} | {sparsity} | – | not compacted: {reason} |||||")
            continue
        dense_m, comp_m = inf["dense"], inf["compact"]
        lines.append(
            f"| {row['model']} | {row['sparse_by']} | {sparsity} | {_accuracy(row)} "
            f"| {dense_m['macs']:,} → {comp_m['macs']:,} (**{inf.get('mac_reduction', 0):.2f}×**) "
            f"| {dense_m['params']:,} → {comp_m['params']:,} | {_chain(inf, lambda m: m['bytes'], '{:,}'.format)} "
            f"| {_latency(inf, '1')} | {_latency(inf, '64')} | {compact.get('max_abs_diff', 0):.1e} |"
        )
    lines += ["", *header.get("notes", [])]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path = README, results: Path = OUT) -> None:
    """Put the table (its README.md without the title) between the README's markers."""
    table = (results / "README.md").read_text().split("\n", 2)[2].strip()
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + f"{README_START}\n{table}\n{README_END}" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true", help="only copy the latest table into README.md")
    parser.add_argument("--epochs-lenet300", type=int, default=30)
    parser.add_argument("--epochs-lenet5", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="latency time per batch size and model pair")
    parser.add_argument("--only", help="comma-separated subset of lenet300,lenet5,vgg16,resnet18")
    args = parser.parse_args(argv)
    if args.readme:
        update_readme()
        print(f"README now shows {OUT / 'README.md'}")
        return 0
    torch.set_num_threads(1)
    only = set((args.only or "lenet300,lenet5,vgg16,resnet18").split(","))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "lenet300" in only:
            epochs = args.epochs_lenet300
            rows.append(
                _dwf_row(
                    "lenet_300_100", "LeNet-300-100", epochs, args.seconds, work, dense_epochs=epochs, finetune_epochs=3
                )
            )
        if "lenet5" in only:
            # LeNet-5-Caffe diverges at the default LR without clipping (benchmarks/mnist_table.py MODEL_SETTINGS).
            rows.append(_dwf_row("lenet5", "LeNet-5", args.epochs_lenet5, args.seconds, work, max_grad_norm=5.0))
        for name, title in (("vgg16", "VGG-16 (CIFAR)"), ("resnet18", "ResNet-18 (CIFAR)")):
            if name in only:
                for how in ("unstructured-0.9", "unstructured-0.99", "filters-0.5"):
                    rows.append(_cifar_row(name, title, how, args.seconds, work))
                    print(f"{title} {how} done", flush=True)
    header = {**stamp("benchmarks.inference", threads=1), "runtime": rows[0]["inference"].get("runtime", "")}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    (OUT / "README.md").write_text(markdown(header, rows))
    print((OUT / "README.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
