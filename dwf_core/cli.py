"""The ``dwf`` command line: ``dwf train`` runs a whole DWF sparsification locally."""

from __future__ import annotations

import math
import shutil
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dwf_core import defaults
from dwf_core.distill import DEFAULT_TEMPERATURE
from dwf_core.errors import ConfigError, DwfError
from dwf_core.precision import Precision

if TYPE_CHECKING:
    from dwf_core.train import ProgressEvent

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Deep Weight Factorization: sparse models.")
console = Console(stderr=True)
out_console = Console()


@app.callback()
def _root() -> None:
    """Deep Weight Factorization: train a factorized model, collapse it into a sparse one."""
    # Made again for each command: rich fixes a console's width from COLUMNS when the console is made, so consoles
    # made at import keep the width of the environment that imported this module (pytest-xdist workers had COLUMNS=80
    # then, and the CLI tests' COLUMNS=250 was ignored: the summary table wrapped the lines they look for).
    global console, out_console
    console, out_console = Console(stderr=True), Console()


def _parse_threshold(value: str) -> float | Literal["auto", "target"]:
    if value in ("auto", "target"):
        return cast(Literal["auto", "target"], value)
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(
            f"--threshold must be 'auto', 'target' or a number, got {value!r}", param="threshold"
        ) from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"--threshold must be 'auto' or a number ≥ 0, got {value!r}", param="threshold")
    return number


def _parse_frontier(value: str | None) -> list[float] | None:
    from dwf_core.frontier import DEFAULT_FRONTIER_CRS, check_frontier

    if value is None:
        return None
    if value.strip() == "default":
        return list(DEFAULT_FRONTIER_CRS)
    try:
        ratios = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--frontier must be comma-separated compression ratios or 'default', got {value!r}", param="frontier"
        ) from None
    return check_frontier(ratios)


def _parse_mac_frontier(text: str | None) -> list[float] | None:
    """``--mac-frontier 0.5,0.1`` → [0.5, 0.1]; 'none' → [] (no cuts); None → the default budgets."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--mac-frontier takes comma-separated MAC fractions, got {text!r}", param="mac_frontier"
        ) from None


def _fmt_cr(value: float | None) -> str:
    if value is None or math.isinf(value):
        return "∞"
    return f"{value:.1f}×"


@app.command()
def train(
    model: Annotated[
        str,
        typer.Option(
            help="Zoo name (lenet_300_100, lenet5, vgg16, vgg19, resnet18), torchvision:NAME, timm:NAME (any "
            "timm.list_models() name, random weights), a .onnx file or a transformers config.json"
        ),
    ],
    data: Annotated[
        str, typer.Option(help="Dataset: .npz/.safetensors/CSV/CIFAR tarball/image-folder zip, or mnist-idx:DIR")
    ],
    out: Annotated[Path, typer.Option(help="Output directory for the artifacts and metrics.json")],
    method: Annotated[
        str,
        typer.Option(
            help="dwf, or a baseline in the same trainer (depth 1; --lam is its L2 strength): dense, magnitude, "
            "magnitude-ft, gmp, snip, synflow, random (all but dense need --target-sparsity)"
        ),
    ] = "dwf",
    depth: Annotated[
        int | None,
        typer.Option(help="Number of factors D (≥ 2 for DWF; 1 = dense with L2); default 3, or 4 for a target ≥ 0.995"),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Pretrained weights (.safetensors) for a zoo model or a config.json")
    ] = None,
    lam: Annotated[float | None, typer.Option(help="λ; default depends on D (see docs/defaults.md)")] = None,
    target_sparsity: Annotated[
        float | None,
        typer.Option(
            help="Sparsity to reach, in (0, 1), instead of --lam: λ from the measured λ→CR map (lowered by a "
            "restart if training over-prunes), the collapse cuts at this quantile"
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs")] = defaults.DEFAULT_EPOCHS,
    finetune_epochs: Annotated[
        int | None,
        typer.Option(
            help="Fine-tuning epochs with the zeros fixed: after DWF's collapse (default: 10% of the epochs when "
            "the --target-sparsity cut cost > 0.5 pp, else none; 0 = never; kept unless it lowers validation "
            "accuracy by > 0.5 pp) or magnitude-ft's prune (default 10%)"
        ),
    ] = None,
    dense_epochs: Annotated[
        int,
        typer.Option(
            help="DWF: train the plain model this many epochs first (the dense baseline's settings), then start "
            "DWF from its weights; LeNet-300-100 at CR 100: 98.17% vs 97.63% from scratch (twice the training)"
        ),
    ] = 0,
    distill: Annotated[
        float | None,
        typer.Option(
            help="DWF from a trained model (--dense-epochs, trained --weights): weight α in [0, 1] of distillation "
            "from it, (1-α)·CE + α·T²·KL to its outputs; helps from a well-trained model (LeNet-300-100 at CR 100: "
            "+0.36 pp at 0.5), hurts from an under-trained one; 0 = off; unset: 0.5 from --weights (or an ONNX "
            "model) that predict the data, off otherwise"
        ),
    ] = None,
    distill_temperature: Annotated[
        float, typer.Option(help="Temperature T of the distillation's softened outputs")
    ] = DEFAULT_TEMPERATURE,
    distill_schedule: Annotated[
        str, typer.Option(help="constant (α throughout) or linear (α decays to 0 over the DWF steps)")
    ] = "constant",
    cut: Annotated[
        str | None,
        typer.Option(
            help="DWF with --target-sparsity: gradual (default: the smallest weights are masked during training, "
            "10%-75% of the steps, cubic schedule) or final (only the cut after training)"
        ),
    ] = None,
    unit_cut: Annotated[
        str | None,
        typer.Option(
            help="--structure units/both with --target-macs: gradual (whole units masked during training, 10%-60% "
            "of the steps, cubic schedule of kept MACs) or final (default: λ follows the MACs, the collapse cuts)"
        ),
    ] = None,
    unit_multiple: Annotated[
        int | None,
        typer.Option(
            help="--structure units/both with --target-macs: keep each layer's units a multiple of this (e.g. 16: "
            "onnxruntime's CPU GEMM computes 16 output units at a time, so 54 units cost what 64 do)"
        ),
    ] = None,
    structure: Annotated[
        str,
        typer.Option(
            help="weights (DWF: every weight factorized), units (D-Gating: D-1 gates per Linear neuron / conv "
            "channel, whole units removed) or both"
        ),
    ] = "weights",
    target_macs: Annotated[
        float | None,
        typer.Option(
            help="--structure units/both: fraction of the dense model's Linear/Conv MACs to keep, in (0, 1]; the "
            "collapse removes the weakest units until it fits"
        ),
    ] = None,
    mac_frontier: Annotated[
        str | None,
        typer.Option(
            help="--structure units/both: also cut at these MAC fractions, e.g. 0.5,0.2,0.1 (default "
            "0.5,0.25,0.1,0.05; 'none' for no cut): metrics.json structured.mac_frontier"
        ),
    ] = None,
    augment: Annotated[
        str | None,
        typer.Option(
            help="Random transforms of every training batch, image inputs only: shift (±2 px), shift:N, flip, or "
            "a comma-separated list (shift:2,flip); validation and test data are never transformed"
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Peak LR (default: measured by the LR probe from SGD 0.3 DWF, 0.1 baselines; Adam 1e-3)"),
    ] = None,
    lr_probe: Annotated[
        bool | None,
        typer.Option(
            "--lr-probe/--no-lr-probe",
            help="Try a few steps at the LR and safer ones (clip, LR ÷ 3 …) first and train with the largest that "
            "learns as well (default: on when --lr is not given)",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size")] = defaults.DEFAULT_BATCH_SIZE,
    optimizer: Annotated[
        str | None, typer.Option(help="sgd or adam (default: SGD, or Adam where the LR probe finds only Adam learns)")
    ] = None,
    momentum: Annotated[float, typer.Option(help="SGD momentum")] = defaults.DEFAULT_MOMENTUM,
    init: Annotated[
        str | None, typer.Option(help="varmatch or balanced (default: balanced with pretrained weights, else varmatch)")
    ] = None,
    threshold: Annotated[
        str, typer.Option(help="'auto' ('target' with --target-sparsity) or a number: |w| below it becomes 0")
    ] = "auto",
    tolerance: Annotated[
        float, typer.Option(help="Max validation-accuracy drop for --threshold auto (fraction)")
    ] = defaults.DEFAULT_TOLERANCE,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    warmup_epochs: Annotated[float, typer.Option(help="Linear LR warmup before the cosine decay")] = 0.0,
    max_grad_norm: Annotated[
        float | None,
        typer.Option(
            help="Clip the gradient norm (default off; a NaN loss restarts training with 5, then with lower LRs)"
        ),
    ] = None,
    include: Annotated[list[str] | None, typer.Option(help="Parameter-name glob to factorize (repeatable)")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Parameter-name glob to leave dense (repeatable)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")] = "auto",
    devices: Annotated[
        int,
        typer.Option(
            help="Train with DDP in this many processes: GPUs from --device's on (NCCL), or CPU processes (gloo); "
            "--batch-size stays the global batch. 1 to 8"
        ),
    ] = 1,
    precision: Annotated[
        str,
        typer.Option(
            help="auto (bf16 autocast on a GPU, float32 on a CPU), fp32, or bf16 (autocast on a GPU or a CPU with "
            "bf16 support)"
        ),
    ] = "auto",
    val_fraction: Annotated[
        float, typer.Option(help="Validation share carved from train when the dataset has none")
    ] = 0.1,
    normalize: Annotated[str, typer.Option(help="auto, none or standardize")] = "auto",
    onnx: Annotated[bool, typer.Option(help="Also export model.onnx (checked with onnxruntime)")] = True,
    fresh: Annotated[bool, typer.Option(help="Ignore an existing checkpoint in OUT instead of resuming")] = False,
    from_run: Annotated[
        Path | None,
        typer.Option(
            help="Continue a finished DWF run: start from the trained factors of that run folder (an earlier OUT) "
            "toward a higher --target-sparsity; depth and --include/--exclude default to that run's"
        ),
    ] = None,
    frontier: Annotated[
        str | None,
        typer.Option(
            help="Also cut the trained model at these compression ratios, e.g. 10,50,100 ('default': "
            "10,20,50,100,200,500,1000): OUT/frontier-crN.sparse.safetensors + metrics.json 'frontier'"
        ),
    ] = None,
) -> None:
    """Factorize MODEL, train it on DATA, collapse it into a sparse model and write the artifacts to OUT."""
    try:
        metrics = _train(**locals())
    except DwfError as err:
        where = f" ({err.param})" if err.param else ""
        console.print(f"[bold red]error[/] {escape(f'[{err.code}]{where}: {err.message}')}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the last epoch's checkpoint is kept; run the same command to resume")
        raise typer.Exit(130) from None
    _print_summary(metrics, out)


def _train(**kw: Any) -> dict[str, Any]:
    from dwf_core.baselines import METHODS, PRUNING_METHODS
    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    method = kw["method"]
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {method!r}", param="method")
    if method in PRUNING_METHODS and kw["target_sparsity"] is None:
        raise ConfigError(
            f"--method {method} needs --target-sparsity S (the fraction to prune)", param="target_sparsity"
        )
    optimizer = kw["optimizer"]
    if optimizer not in (None, "sgd", "adam"):
        raise ConfigError(f"--optimizer must be sgd or adam, got {optimizer!r}", param="optimizer")
    if method == "dwf" and kw["lam"] is not None and kw["target_sparsity"] is not None:
        raise ConfigError("give --lam or --target-sparsity, not both", param="target_sparsity")
    if kw["init"] not in (None, "varmatch", "balanced"):
        raise ConfigError(f"--init must be varmatch or balanced, got {kw['init']!r}", param="init")
    config = TrainConfig(
        method=method,
        depth=kw["depth"],
        epochs=kw["epochs"],
        lam=kw["lam"],
        target_sparsity=kw["target_sparsity"],
        lr=kw["lr"],
        lr_probe=kw["lr_probe"],
        batch_size=kw["batch_size"],
        optimizer=cast(Literal["sgd", "adam"] | None, optimizer),
        momentum=kw["momentum"],
        init=kw["init"],
        threshold=_parse_threshold(kw["threshold"]),
        tolerance=kw["tolerance"],
        seed=kw["seed"],
        warmup_epochs=kw["warmup_epochs"],
        max_grad_norm=kw["max_grad_norm"],
        include=kw["include"] or None,
        exclude=kw["exclude"] or None,
        device=kw["device"],
        devices=kw["devices"],
        precision=cast(Precision, kw["precision"]),
        finetune_epochs=kw["finetune_epochs"],
        frontier=_parse_frontier(kw["frontier"]),
        dense_epochs=kw["dense_epochs"],
        distill=kw["distill"],
        distill_temperature=kw["distill_temperature"],
        distill_schedule=cast(Literal["constant", "linear"], kw["distill_schedule"]),
        cut=cast(Literal["gradual", "final"] | None, kw["cut"]),
        unit_cut=cast(Literal["gradual", "final"] | None, kw["unit_cut"]),
        unit_multiple=kw["unit_multiple"],
        structure=kw["structure"],
        target_macs=kw["target_macs"],
        mac_frontier=_parse_mac_frontier(kw["mac_frontier"]),
        augment=kw["augment"],
    )
    config.validate()
    out: Path = kw["out"]
    checkpoints = out / "checkpoints"
    start_state = None
    if kw["from_run"] is not None:
        from dwf_core.continuation import start_state_path

        start_state = start_state_path(kw["from_run"])
        if start_state.resolve() == checkpoints.resolve():
            raise ConfigError("--from-run must be another run's folder than --out", param="from_run")
    if kw["fresh"] and checkpoints.exists():
        shutil.rmtree(checkpoints)
    spec = RunSpec(
        model=kw["model"],
        data=kw["data"],
        out_dir=out,
        weights=str(kw["weights"]) if kw["weights"] else None,
        train=config,
        val_fraction=kw["val_fraction"],
        normalize=kw["normalize"],
        export_onnx=kw["onnx"],
        checkpoint_dir=checkpoints,
        allow_onnx_external_data=True,
        start_state=start_state,
    )
    bar = _TrainProgress(console)
    # Before torch starts its intra-op threads (they inherit it): pruned weights sink into the subnormal range,
    # where CPU arithmetic is many times slower (dwf_core.denormals).
    from dwf_core.denormals import flush_denormals

    flush_denormals()
    with bar.progress:
        return run(spec, on_progress=bar.on_progress, on_phase=bar.on_phase)


def _fmt_eta(seconds: float | None) -> str:
    return "-" if seconds is None else str(timedelta(seconds=round(seconds)))


class _TrainProgress:
    """The live bar of ``dwf train``: phase (and attempt after a restart), the running attempt's steps, epoch, loss,
    val acc, CR, elapsed time and its ETA (``ProgressEvent.eta_s``); a line above it for every restart."""

    def __init__(self, target: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("epoch {task.fields[epoch]}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val acc {task.fields[acc]}"),
            TextColumn("CR {task.fields[cr]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=target,
        )
        self.task = self.progress.add_task("loading", total=None, epoch="-", loss="-", acc="-", cr="-", eta="-")
        self.phase = "loading"

    def on_phase(self, name: str) -> None:
        """A new phase: its name replaces the last one's, with its own attempts and ETA."""
        self.phase = name
        self.progress.update(self.task, description=name, eta="-")

    def on_progress(self, event: ProgressEvent) -> None:
        """Steps and epochs of the running attempt; a restart is printed and the bar starts over."""
        from dwf_core.divergence import restart_message

        fields: dict[str, Any] = {"epoch": f"{event.epoch}/{event.epochs}", "loss": f"{event.loss:.4f}"}
        lam_restart = (event.metrics or {}).get("restart")
        if event.probe is not None:
            from dwf_core.lr_probe import probe_message

            self.progress.console.print(escape(probe_message(event.probe)))
        if event.restart is not None:
            self.progress.console.print(f"[yellow]{escape(restart_message(event.restart))}[/]")
            fields.update(epoch="-", loss="-", acc="-", cr="-")
        elif isinstance(lam_restart, dict):
            self.progress.console.print(
                f"[yellow]epoch {event.epoch}: {100 * lam_restart['dead_sparsity']:.2f}% of the weights are dead, "
                f"more than the target allows: training restarts with λ {lam_restart['next_lam']:.3g}[/]"
            )
            fields.update(epoch="-", loss="-", acc="-", cr="-")
        elif event.metrics is not None:
            fields["acc"] = f"{100 * event.metrics['val_accuracy']:.2f}%"
            fields["cr"] = _fmt_cr(event.metrics["compression_ratio"])
        description = self.phase if event.attempt == 1 else f"{self.phase} (attempt {event.attempt})"
        self.progress.update(
            self.task,
            description=description,
            total=event.total_steps,
            completed=event.global_step,
            eta=_fmt_eta(event.eta_s),
            **fields,
        )


def _print_summary(metrics: dict[str, Any], out: Path) -> None:
    method = metrics.get("method", "dwf")
    table = Table(title="DWF result" if method == "dwf" else f"{method} baseline result", show_header=False)
    table.add_row("test accuracy (sparse model)", f"{100 * metrics['test_accuracy']:.2f}%")
    before = "factorized" if method == "dwf" else "before collapse"
    table.add_row(f"test accuracy ({before})", f"{100 * metrics['factorized_test_accuracy']:.2f}%")
    table.add_row("compression ratio", _fmt_cr(metrics["compression_ratio"]))
    if metrics.get("target_sparsity") is not None:
        table.add_row("sparsity (requested)", f"{100 * metrics['target_sparsity']:.3f}%")
        table.add_row("final λ" if method == "dwf" else "L2 λ", f"{metrics['lam']:.3g}")
    source = metrics.get("continued_from")
    if source:  # --from-run: where the factors came from
        reached = "" if source.get("sparsity") is None else f", {100 * source['sparsity']:.2f}% sparse"
        table.add_row("continued from", f"epoch {source['epoch']} of a depth-{source['depth']} run{reached}")
    distill = metrics.get("distill")
    if distill:  # DWF from a trained model, trained toward its outputs too (dwf_core.distill)
        decay = ", decaying to 0" if distill.get("schedule") == "linear" else ""
        why = " (the default from trained weights; --distill 0 turns it off)" if distill.get("automatic") else ""
        table.add_row(
            "distillation",
            f"from the starting model, α {distill['alpha']:g}{decay}, T {distill['temperature']:g}{why}",
        )
    cut = metrics.get("cut")
    if cut:
        steps = f" ({cut['events']} masking steps, {cut['start_step']}–{cut['end_step']})" if "events" in cut else ""
        table.add_row("cut", f"{cut['mode']}{steps}")
    recalibration = metrics.get("batchnorm_recalibration")
    if recalibration:  # a cut that cost accuracy, on a model with BatchNorm: its statistics measured again
        table.add_row(
            "BatchNorm statistics",
            f"measured again after the cut ({recalibration['batches']} batches): val "
            f"{100 * recalibration['val_accuracy_before']:.2f}% → {100 * recalibration['val_accuracy_after']:.2f}%"
            + ("" if recalibration["kept"] else ", not kept"),
        )
    finetune = metrics.get("finetune")
    if finetune:  # DWF's masked fine-tuning after the cut: how it trained and what it won back
        table.add_row(
            "fine-tuning",
            f"{finetune['epochs']} epoch(s), {finetune.get('optimizer', 'sgd')} LR {finetune['lr']:.3g} "
            f"({finetune.get('reason', 'requested')}): val {100 * finetune['val_accuracy_before']:.2f}% → "
            f"{100 * finetune['val_accuracy_after']:.2f}%"
            + (", kept the model before it" if finetune.get("kept") == "before" else ""),
        )
    unit_cut = metrics.get("unit_cut")
    if unit_cut:
        multiple = unit_cut.get("unit_multiple") or 1
        rounding = f", layers in multiples of {multiple}" if multiple > 1 else ""
        table.add_row(
            "unit cut", f"gradual ({unit_cut['events']} masking steps, {unit_cut['units_removed']} units{rounding})"
        )
    structured = metrics.get("structured")
    if structured:
        kept = ", ".join(f"{layer['name']} {layer['units']}/{layer['units_total']}" for layer in structured["layers"])
        table.add_row("MACs kept (of dense)", f"{100 * structured['mac_fraction']:.2f}%")
        table.add_row("units kept", kept)
    table.add_row("sparsity", f"{100 * metrics['sparsity']:.3f}%")
    table.add_row("non-zeros / weights", f"{metrics['nnz']:,} / {metrics['total']:,}")
    table.add_row("threshold", f"{metrics['threshold']:.3g} ({metrics['threshold_mode']})")
    table.add_row("max |Δlogit| test", f"{metrics['max_abs_logit_diff_test']:.3g}")
    for art in metrics["artifacts"]:
        table.add_row(art["name"], f"{art['bytes']:,} bytes")
    for point in metrics.get("frontier") or []:
        table.add_row(
            f"frontier CR {point['requested_compression_ratio']:g}",
            f"test {100 * point['test_accuracy']:.2f}%, val {100 * point['val_accuracy']:.2f}%, "
            f"{point['bytes']:,} bytes",
        )
    table.add_row("output", str(out))
    out_console.print(table)


def main() -> None:
    """Entry point of the ``dwf`` console script."""
    app()
