"""DWF training overhead: step time and memory of a factorized model ÷ the same model trained dense.

    python -m benchmarks.overhead [--quick] [--steps 30] [--warmup 5] [--batch 128] [--no-rss]

For LeNet-5 (1×28×28) and the CIFAR ResNet-18 (3×32×32), 10 classes, batch 128, random data: the model is
built twice from the same seed; one copy is factorized (depth 3, ``param_groups`` with λ = 2e-4), the other
trained dense (plain SGD, momentum 0.9). The variants are ALTERNATED step by step in one process (dense,
dwf, dwf-cached, dense, …) so drifts of the machine hit all of them alike; each step is zero_grad → forward →
cross-entropy → backward → optimizer.step, timed with ``time.perf_counter`` (CUDA: synchronized). Medians and
IQRs over the measured steps after warm-up.

"dwf-cached" wraps forward+backward in ``torch.nn.utils.parametrize.cached()`` (the cache is left before the
optimizer step, so it is valid; its gradients are checked equal to the uncached ones). Every conv/linear
weight is read once per forward, so caching cannot save a product: it is reported to show exactly that.
"dense-fused"/"dwf-fused" use ``torch.optim.SGD(fused=True)`` on both sides (one kernel per parameter group
instead of several passes; DWF has 3× the weight elements plus weight decay, so its optimizer step costs more).
ResNet-18 times dense, dwf and dwf-cached only by default (``--resnet-variants``): a step takes seconds here.

Memory, two measures:
- tensor bytes (exact, deterministic): unique storages of parameters + gradients + optimizer state + the
  tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``), i.e. what a training
  step holds at its peak (just before backward frees the saved tensors); input batch excluded.
- peak RSS (CPU): one fresh subprocess per variant runs the same steps; ``ru_maxrss`` minus the RSS right
  before the first step (so the ~300 MB of imported libraries do not dilute the ratio). Allocator-dependent.

Writes benchmarks/results/overhead.{json,md} (``--quick``: overhead-quick.*).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from dwf_core.factorize import factorize
from dwf_core.intake import build_model
from dwf_core.penalty import param_groups

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
MODELS: dict[str, tuple[int, ...]] = {"lenet5": (1, 28, 28), "resnet18": (3, 32, 32)}
VARIANTS = ("dense", "dwf", "dwf-cached", "dense-fused", "dwf-fused")
# Each DWF variant's step time is divided by the dense variant with the same optimizer implementation.
QUIET = 1.25
MEMORY_VARIANTS = ("dense", "dwf", "dwf-cached")  # must start with "dense"
BASELINE = {"dwf": "dense", "dwf-cached": "dense", "dwf-fused": "dense-fused"}
DEPTH, LAM, LR, MOMENTUM = 3, 2e-4, 0.01, 0.9


def _commit() -> str:
    from benchmarks.stamp import commit

    return commit()


def _build(model_name: str, variant: str, seed: int, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model of ``variant`` (same seed for all) and its optimizer, as the trainer builds it."""
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=10, input_shape=MODELS[model_name]).to(device)
    # "-fused": torch's fused SGD kernel (one pass over parameter, gradient and momentum) for both sides.
    extra = {"fused": True} if variant.endswith("-fused") else {}
    if variant.startswith("dense"):
        return model, torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, **extra)
    factorize(model, depth=DEPTH, seed=seed)
    return model, torch.optim.SGD(param_groups(model, LAM), lr=LR, momentum=MOMENTUM, **extra)


def _forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cached: bool) -> None:
    if cached:
        with parametrize.cached():
            nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
    else:
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]


def _stepper(
    model: nn.Module, opt: torch.optim.Optimizer, variant: str
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    cached = variant == "dwf-cached"

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        _forward_backward(model, x, y, cached)
        opt.step()

    return step


def _batches(shape: tuple[int, ...], batch: int, count: int, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(1234)
    return [
        (torch.randn(batch, *shape, generator=gen).to(device), torch.randint(0, 10, (batch,), generator=gen).to(device))
        for _ in range(count)
    ]


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def tensor_bytes(model_name: str, variant: str, batch: int, seed: int = 0, device: str = "cpu") -> dict[str, int]:
    """Bytes of parameters, gradients, optimizer state and autograd-saved tensors of one training step.

    Counted as unique storages (a tensor saved by several ops, or a parameter that is also saved, counts once).
    """
    dev = torch.device(device)
    model, opt = _build(model_name, variant, seed, dev)
    x, y = _batches(MODELS[model_name], batch, 1, dev)[0]
    step = _stepper(model, opt, variant)
    step(x, y)  # creates the momentum buffers
    seen: dict[tuple[int, int], str] = {}
    alive: list[torch.Tensor] = []  # keep every counted tensor alive so no address is reused and miscounted

    def add(t: torch.Tensor, kind: str) -> None:
        alive.append(t)
        seen.setdefault(_storage_key(t), kind)

    for p in model.parameters():
        add(p.detach(), "parameters")
    for state in opt.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                add(value, "optimizer_state")
    add(x, "input")

    def pack(t: torch.Tensor) -> torch.Tensor:
        add(t, "saved_for_backward")
        return t

    opt.zero_grad(set_to_none=True)
    cached = variant == "dwf-cached"
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if cached:
            with parametrize.cached():
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
        else:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
    for p in model.parameters():
        if p.grad is not None:
            add(p.grad, "gradients")
    out: dict[str, int] = {k: 0 for k in ("parameters", "gradients", "optimizer_state", "saved_for_backward", "input")}
    for (_, nbytes), kind in seen.items():
        out[kind] += nbytes
    out["total"] = sum(v for k, v in out.items() if k != "input")
    return out


def _check_cached_grads(model_name: str, batch: int, seed: int, device: torch.device) -> float:
    """Max |Δgrad| between the cached and uncached DWF forward/backward on the same batch (should be 0)."""
    x, y = _batches(MODELS[model_name], batch, 1, device)[0]
    grads = []
    for cached in (False, True):
        model, _ = _build(model_name, "dwf", seed, device)
        _forward_backward(model, x, y, cached)
        grads.append([p.grad.detach().clone() for p in model.parameters() if p.grad is not None])
    return max(float((a - b).abs().max()) for a, b in zip(grads[0], grads[1], strict=True))


def _summary(times: list[float]) -> dict[str, float]:
    q1, med, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (times[0],) * 3
    return {"median_ms": 1e3 * med, "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3, "iqr_ms": 1e3 * (q3 - q1)}


def time_steps(
    model_name: str,
    *,
    batch: int = 128,
    steps: int = 30,
    warmup: int = 5,
    seed: int = 0,
    device: str = "cpu",
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """Alternate the variants step by step; per variant the median/IQR of the measured step times (ms)."""
    dev = torch.device(device)
    steppers = {v: _stepper(*_build(model_name, v, seed, dev), v) for v in variants}
    data = _batches(MODELS[model_name], batch, 4, dev)
    times: dict[str, list[float]] = {v: [] for v in variants}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for i in range(warmup + steps):
        x, y = data[i % len(data)]
        for v in variants:
            sync()
            start = time.perf_counter()
            steppers[v](x, y)
            sync()
            if i >= warmup:
                times[v].append(time.perf_counter() - start)
    result: dict[str, Any] = {v: _summary(t) for v, t in times.items()}
    # A round is "quiet" when no variant in it ran more than 25% above its own fastest step: on a shared machine
    # other processes inflate whole stretches of steps, and those rounds say nothing about the ratio.
    quiet = [i for i in range(steps) if all(times[v][i] <= QUIET * min(times[v]) for v in variants)]
    result["quiet_rounds"] = len(quiet)
    for v in variants:
        result[v]["times_ms"] = [round(1e3 * t, 3) for t in times[v]]
        base = BASELINE.get(v)
        if base in variants:
            result[v]["baseline"] = base
            result[v]["ratio_vs_dense"] = result[v]["median_ms"] / result[base]["median_ms"]
            # The per-step ratio (each DWF step ÷ the dense step of the same round) is robust to slow drifts.
            paired = [a / b for a, b in zip(times[v], times[base], strict=True)]
            result[v]["paired_ratio_median"] = statistics.median(paired)
            if quiet:
                result[v]["quiet_paired_ratio_median"] = statistics.median(paired[i] for i in quiet)
    return result


def _rss_child(model_name: str, variant: str, batch: int, steps: int, device: str) -> dict[str, float]:
    dev = torch.device(device)
    data = _batches(MODELS[model_name], batch, 2, dev)
    # Importing torch & co. peaks higher than a LeNet step, so reset the kernel's peak-RSS mark (VmHWM) first.
    # The baseline is taken before the model is built, so parameters and optimizer state count too.
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _proc_status_kb("VmRSS")
    step = _stepper(*_build(model_name, variant, 0, dev), variant)
    for i in range(steps):
        step(*data[i % 2])
    peak = _proc_status_kb("VmHWM")
    return {"rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024, "peak_delta_mb": (peak - before) / 1024}


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss(model_name: str, variant: str, batch: int, steps: int = 3) -> dict[str, float]:
    """Peak RSS of a fresh subprocess that runs ``steps`` CPU training steps of ``variant``."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.overhead", "--rss-child", model_name, variant, str(batch), str(steps)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure(
    model_name: str,
    *,
    batch: int = 128,
    steps: int = 30,
    warmup: int = 5,
    device: str = "cpu",
    rss: bool = True,
    seed: int = 0,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """Everything for one model and device: step times, tensor bytes, (CPU) peak RSS, and their ratios.

    Memory is measured for dense, dwf and dwf-cached only (the fused optimizer holds the same tensors).
    """
    timing = time_steps(
        model_name, batch=batch, steps=steps, warmup=warmup, seed=seed, device=device, variants=variants
    )
    mem_variants = [v for v in MEMORY_VARIANTS if v in variants]
    memory = {v: tensor_bytes(model_name, v, batch, seed, device) for v in mem_variants}
    result: dict[str, Any] = {
        "model": model_name,
        "input_shape": list(MODELS[model_name]),
        "device": device,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "timing": timing,
        "tensor_bytes": memory,
        "variants": list(variants),
        "tensor_bytes_ratio": {v: memory[v]["total"] / memory["dense"]["total"] for v in mem_variants[1:]},
        "cached_max_abs_grad_diff": _check_cached_grads(model_name, min(batch, 16), seed, torch.device(device)),
    }
    if rss and device == "cpu":
        peaks = {v: peak_rss(model_name, v, batch) for v in mem_variants}
        result["peak_rss"] = peaks
        result["peak_rss_delta_ratio"] = {
            v: peaks[v]["peak_delta_mb"] / peaks["dense"]["peak_delta_mb"] for v in mem_variants[1:]
        }
    return result


def _fmt(d: dict[str, Any] | None, key: str, spec: str = "{:.3f}×") -> str:
    return spec.format(d[key]) if d and key in d else "—"


def _markdown(header: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# DWF training overhead (depth 3, λ = 2e-4) vs dense, batch 128, random data",
        "",
        f"Command: `{header['command']}` · commit {header['commit']} · {header['machine']} · {header['date']}",
        "",
        "Step = zero_grad → forward → cross-entropy → backward → SGD(momentum 0.9).step; variants alternated step "
        "by step in one process; median [Q1–Q3] over the measured steps after warm-up. *Paired* = median over "
        "steps of (DWF step ÷ its dense step of the same round); *quiet* = the same over the rounds where no variant "
        "ran > 1.25× its own fastest step (the machine is shared: other processes inflate stretches of steps). "
        "-fused = `torch.optim.SGD(fused=True)` on both "
        "sides (dwf-fused ÷ dense-fused). *Tensor bytes* = sum of the unique storages of parameters + gradients "
        "+ optimizer state + tensors autograd saves for backward (exact, via `saved_tensors_hooks`; an upper "
        "bound of what one step holds at its peak; input batch excluded). *Peak RSS Δ* = peak RSS (VmHWM, reset "
        "via /proc/self/clear_refs) of a fresh process per variant over 3 steps minus its RSS before the model "
        "was built (includes parameters and optimizer state; allocator-dependent; CPU only).",
        "",
        "| model | device | variant | step ms, median [Q1–Q3] | ÷ dense (medians) | ÷ dense (paired) | "
        "÷ dense (paired, quiet rounds) | tensor MB | ÷ dense | peak RSS Δ MB | ÷ dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for v in r["variants"]:
            t = r["timing"][v]
            mem = _fmt({k: b / 2**20 for k, b in r["tensor_bytes"].get(v, {}).items()}, "total", "{:.1f}")
            rss = r.get("peak_rss", {}).get(v)
            quiet = f" ({r['timing']['quiet_rounds']}/{r['steps']})"
            lines.append(
                f"| {r['model']} | {r['device']} | {v} | {t['median_ms']:.1f} [{t['q1_ms']:.1f}–{t['q3_ms']:.1f}] | "
                f"{_fmt(t, 'ratio_vs_dense')} | {_fmt(t, 'paired_ratio_median')} | "
                f"{_fmt(t, 'quiet_paired_ratio_median')}{quiet if v in BASELINE else ''} | {mem} | "
                f"{_fmt(r['tensor_bytes_ratio'], v)} | {_fmt(rss, 'peak_delta_mb', '{:.0f}')} | "
                f"{_fmt(r.get('peak_rss_delta_ratio', {}), v)} |"
            )
    lines += [
        "",
        "Tensor bytes by kind (MB): "
        + "; ".join(
            f"{r['model']}/{v}: "
            + ", ".join(f"{k} {b / 2**20:.1f}" for k, b in r["tensor_bytes"][v].items() if k not in ("total", "input"))
            for r in rows
            for v in r["tensor_bytes"]
        ),
        "",
        "dwf-cached gradients equal the uncached ones (max |Δ| "
        + ", ".join(f"{r['model']}: {r['cached_max_abs_grad_diff']:.1g}" for r in rows)
        + ").",
    ]
    if header.get("notes"):
        lines += ["", *header["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="LeNet-5 only, 3 warm-up + 10 measured steps")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["lenet5", "resnet18"])
    parser.add_argument("--resnet-steps", type=int, default=20, help="measured steps for resnet18")
    parser.add_argument("--resnet-warmup", type=int, default=3)
    parser.add_argument(
        "--resnet-variants",
        nargs="+",
        choices=VARIANTS,
        default=list(MEMORY_VARIANTS),
        help="variants timed for resnet18 (a step takes seconds on 2 cores; LeNet-5 always gets all)",
    )
    parser.add_argument("--no-rss", action="store_true", help="skip the per-variant peak-RSS subprocesses")
    parser.add_argument(
        "--device", choices=("all", "cpu", "cuda"), default="all", help="all: the CPU, and CUDA when present"
    )
    parser.add_argument("--out", type=Path, help="results file stem (default benchmarks/results/overhead)")
    parser.add_argument("--rss-child", nargs=4, metavar=("MODEL", "VARIANT", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        model_name, variant, batch, steps = args.rss_child
        print(json.dumps(_rss_child(model_name, variant, int(batch), int(steps), "cpu")))
        return
    if args.quick:
        args.models, args.steps, args.warmup = ["lenet5"], 10, 3
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "all":
        devices = [args.device]
    rows = []
    for device in devices:
        for model_name in args.models:
            started = time.monotonic()
            row = measure(
                model_name,
                batch=args.batch,
                steps=args.resnet_steps if model_name == "resnet18" else args.steps,
                warmup=args.resnet_warmup if model_name == "resnet18" else args.warmup,
                device=device,
                rss=not args.no_rss,
                variants=tuple(args.resnet_variants) if model_name == "resnet18" else VARIANTS,
            )
            rows.append(row)
            t = row["timing"]
            print(
                f"{model_name}/{device}: dense {t['dense']['median_ms']:.1f} ms, dwf {t['dwf']['median_ms']:.1f} ms "
                f"({t['dwf']['ratio_vs_dense']:.3f}×, paired {t['dwf']['paired_ratio_median']:.3f}×), cached "
                f"{t['dwf-cached']['ratio_vs_dense']:.3f}×; tensor bytes {row['tensor_bytes_ratio']['dwf']:.2f}× "
                f"({time.monotonic() - started:.0f}s)",
                flush=True,
            )
    header = {
        "command": ("python -m benchmarks.overhead " + " ".join(sys.argv[1:])).strip(),
        "commit": _commit(),
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"),
        "date": dt.date.today().isoformat(),
        "settings": {
            "depth": DEPTH,
            "lam": LAM,
            "lr": LR,
            "momentum": MOMENTUM,
            **vars(args),
            "out": str(args.out) if args.out else None,
        },
    }
    out = args.out or ROOT / "results" / ("overhead-quick" if args.quick else "overhead")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(_markdown(header, rows))


if __name__ == "__main__":
    main()
