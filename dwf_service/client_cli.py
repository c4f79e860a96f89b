"""Client commands of ``dwf`` for a running job service: submit, jobs, status, events, cancel, download.

They talk to the server through the SDK (dwf_client). The server is ``--server`` (before or after the command),
else $DWF_SERVER, else the URL that ``dwf serve`` saved; the key is $DWF_API_KEY, else the saved one. An API error
prints one line on stderr and exits 1. ``dwf submit`` prints the job id on stdout, everything else on stderr.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from dwf_client import Client, DwfApiError, DwfError, Event, Job, JobData, JobProgress
from dwf_service.continue_cli import continue_options, continue_usage_error

# soft_wrap: a message stays one line however narrow the terminal; a pipe or file gets 200 columns, not rich's 80.
PIPE_WIDTH = 200
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else PIPE_WIDTH)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Server URL (default $DWF_SERVER, else the URL `dwf serve` saved, else http://127.0.0.1:8000)",
        show_default=False,
    ),
]
JobId = Annotated[str, typer.Argument(help="A job id (job-…), as printed by `dwf submit` or `dwf jobs`")]
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def root(ctx: typer.Context, server: ServerOption = None) -> None:
    """Deep Weight Factorization: sparse models, locally (train) or through the job service (serve, submit…)."""
    ctx.obj = {"server": server}


def _line(text: str) -> str:
    """``text`` on one line, escaped for rich markup."""
    return escape(" ".join(text.split()))


@contextmanager
def _errors() -> Iterator[None]:
    """Turn SDK errors into one line on stderr and exit code 1 (no traceback)."""
    try:
        yield
    except DwfApiError as exc:
        param = f" [{exc.param}]" if exc.param else ""
        err.print(f"[red]error:[/] {_line(exc.message)}{escape(param)} ({exc.status} {escape(exc.code)})")
        raise typer.Exit(EXIT_ERROR) from None
    except DwfError as exc:
        err.print(f"[red]error:[/] {_line(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None
    except OSError as exc:
        err.print(f"[red]error:[/] {_line(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None
    except ValidationError as exc:  # an answer that does not have the API's shape (wrong URL, old server)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first.get("loc", ()))
        err.print(f"[red]error:[/] unexpected answer from the server ({escape(where)}: {escape(str(first['msg']))})")
        raise typer.Exit(EXIT_ERROR) from None


def _client(ctx: typer.Context, server: str | None) -> Client:
    obj = ctx.find_root().obj
    root_server = obj.get("server") if isinstance(obj, dict) else None
    return Client.from_env(server=server or root_server)


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, int | float) and math.isfinite(value) else "-"


def _num(value: Any, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, int | float) and math.isfinite(value) else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _model_label(job: JobData) -> str:
    return str(job.model.get("name") or job.model.get("file_id") or "-")


def _summary(job: JobData) -> str:
    """One line: how the job ended and its main numbers."""
    m = job.metrics or {}
    if job.status == "succeeded":
        cr = m.get("compression_ratio")
        return (
            f"{job.id} succeeded: test accuracy {_pct(m.get('test_accuracy'))}, sparsity {_pct(m.get('sparsity'))}, "
            f"compression {_num(cr, '.1f')}×, nnz {m.get('nnz', '-')}/{m.get('total', '-')}"
        )
    if job.status == "failed" and job.error is not None:
        where = f" [{job.error.param}]" if job.error.param else ""
        return f"{job.id} failed: {job.error.message or '-'}{where} ({job.error.code or 'error'})"
    return f"{job.id} {job.status}"


# ----------------------------------------------------------------------------------------------------- submit


class _JobBar:
    """The live bar of ``dwf submit --wait``: status/phase, fraction, epoch, loss, accuracy, CR, ETA."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID = progress.add_task(
            "job", total=100, status="submitted", epoch="-", loss="-", acc="-", cr="-", eta="-"
        )

    def on_progress(self, p: JobProgress) -> None:
        status = p.status if p.status != "running" or not p.phase else p.phase
        epoch = f"{p.epoch}/{p.epochs}" if p.epoch is not None and p.epochs else "-"
        done = p.job.done and p.status == "succeeded"
        self.progress.update(
            self.task,
            completed=100.0 if done else 100.0 * (p.fraction or 0.0),
            status=status,
            epoch=epoch,
            loss=_num(p.loss),
            acc=_pct(p.accuracy),
            cr=f"{_num(p.compression_ratio, '.1f')}×" if p.compression_ratio is not None else "-",
            eta=_duration(0.0 if p.job.done else p.eta_seconds),
        )

    def on_event(self, event: Event) -> None:
        style = {"warn": "yellow", "warning": "yellow", "error": "red"}.get(event.level, "dim")
        self.progress.console.print(f"[{style}]{escape(event.created_at[11:19])} {escape(event.message)}[/]")


def _job_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.fields[status]:<16}"),
        BarColumn(bar_width=30),
        TaskProgressColumn(),
        TextColumn("epoch {task.fields[epoch]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("acc {task.fields[acc]}"),
        TextColumn("CR {task.fields[cr]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
        console=err,
    )


def _transfer_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _uploader(progress: Progress) -> Any:
    tasks: dict[str, TaskID] = {}

    def on_upload(name: str, sent: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(f"upload {name}", total=total)
        progress.update(tasks[name], completed=sent, total=total)

    return on_upload


def _downloader(progress: Progress) -> Any:
    tasks: dict[str, TaskID] = {}

    def on_download(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(f"download {name}", total=total)
        progress.update(tasks[name], completed=done, total=total)

    return on_download


def _parse_metadata(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err.print(f"[red]error:[/] --metadata takes KEY=VALUE, got {escape(item)!r}")
            raise typer.Exit(EXIT_USAGE)
        pairs[key] = value
    return pairs


def _parse_threshold(value: str | None) -> str | float | None:
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        err.print(f"[red]error:[/] --threshold takes 'auto' or a number, got {escape(value)!r}")
        raise typer.Exit(EXIT_USAGE) from None


def _wait(job: Job) -> Job:
    """Follow the job with the live bar; Ctrl-C detaches (the job keeps running)."""
    bar_progress = _job_progress()
    bar = _JobBar(bar_progress)
    try:
        with bar_progress:
            job = job.wait(on_progress=bar.on_progress, on_event=bar.on_event)
    except KeyboardInterrupt:
        err.print(f"detached; {job.id} keeps running (`dwf status {job.id}`, `dwf cancel {job.id}`)")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    return job


def submit(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Argument(
            help="Zoo name (lenet_300_100, lenet5, vgg16, resnet18), torchvision:NAME, timm:NAME (a timm.list_models() "
            "name, random weights), an .onnx file or a transformers config.json (omitted with --from-job)"
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Argument(
            help="Dataset file (.npz, .safetensors, CSV, image .zip…) or mnist-idx:DIR (omitted with --from-job)"
        ),
    ] = None,
    from_job: Annotated[
        str | None,
        typer.Option(
            help="Continue this succeeded DWF job from its trained factors to a higher --target-sparsity (its model, "
            "dataset and the settings not given here are the parent's)"
        ),
    ] = None,
    depth: Annotated[
        int | None, typer.Option(help="Factorization depth D (server default 3, or 4 for a target ≥ 0.995)")
    ] = None,
    lam: Annotated[float | None, typer.Option(help="Regularization strength λ (not with --target-sparsity)")] = None,
    target_sparsity: Annotated[
        float | None, typer.Option(help="Sparsity to reach, 0 < s < 1 (λ set by the target; not with --lam)")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (server default 40)")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: measured per model)")] = None,
    lr_probe: Annotated[
        bool | None,
        typer.Option(
            "--lr-probe/--no-lr-probe",
            help="Measure the LR on the model first (a few steps per setting; default: on when --lr is not given)",
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="dwf, or a baseline in the same trainer: dense, magnitude, magnitude-ft, gmp, snip, synflow, "
            "random (all but dense need --target-sparsity)"
        ),
    ] = "dwf",
    batch_size: Annotated[int | None, typer.Option(help="Batch size (server default 128)")] = None,
    devices: Annotated[
        int | None,
        typer.Option(help="Train on this many GPUs of one worker (CPU processes without GPUs) with DDP; 1 to 8"),
    ] = None,
    dense_epochs: Annotated[
        int | None, typer.Option(help="DWF: train the plain model this many epochs first, then DWF from it")
    ] = None,
    distill: Annotated[
        float | None,
        typer.Option(
            help="DWF from a trained model: weight α in [0, 1] of distillation from it (0 = off; server default: 0.5 "
            "from uploaded weights that predict the data, off otherwise)"
        ),
    ] = None,
    distill_temperature: Annotated[
        float | None, typer.Option(help="Temperature of the distillation's softened outputs (server default 4)")
    ] = None,
    distill_schedule: Annotated[
        str | None, typer.Option(help="constant (α throughout, the default) or linear (α decays to 0)")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam")] = None,
    structure: Annotated[
        str | None,
        typer.Option(help="weights (DWF), units (D-Gating: remove whole neurons / conv channels) or both"),
    ] = None,
    target_macs: Annotated[
        float | None, typer.Option(help="--structure units/both: fraction of the dense model's MACs to keep")
    ] = None,
    cut: Annotated[
        str | None,
        typer.Option(help="DWF with --target-sparsity: gradual (server default: masked during training) or final"),
    ] = None,
    unit_cut: Annotated[
        str | None,
        typer.Option(help="--structure units/both with --target-macs: gradual (units masked during training) or final"),
    ] = None,
    unit_multiple: Annotated[
        int | None,
        typer.Option(help="--structure units/both with --target-macs: keep each layer's units a multiple of this"),
    ] = None,
    augment: Annotated[
        str | None,
        typer.Option(help="Random transforms of training batches, image inputs only: shift, shift:N, flip, or a list"),
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="Training arithmetic: auto (server default: bf16 on a GPU), fp32 or bf16")
    ] = None,
    threshold: Annotated[str | None, typer.Option(help="Collapse threshold: 'auto' or a number")] = None,
    frontier: Annotated[
        list[float] | None, typer.Option(help="Also save the model cut at this compression ratio (repeatable)")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Pretrained .safetensors weights for a zoo/torchvision/timm/config.json model")
    ] = None,
    num_classes: Annotated[int | None, typer.Option(help="Output classes of a zoo/torchvision/timm model")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Share of training data held out for validation")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed")] = None,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE kept with the job (repeatable)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job with a live progress bar until it ends")] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="With --wait: download the artifacts here when the job succeeds")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Reuse to make a re-run return the same job (default: a fresh one)")
    ] = None,
    webhook: Annotated[
        str | None, typer.Option(help="URL POSTed (signed) on every status change of this job (`dwf deliveries`)")
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(
            envvar="DWF_WEBHOOK_SECRET",
            show_envvar=True,
            help="Signing secret of --webhook (16-128 characters; default: generated and printed once)",
        ),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Upload MODEL (if a file) and DATA, create a DWF job and print its id; --wait follows it to the end.

    With --from-job JOB instead of MODEL and DATA: a job that continues JOB from its trained factors."""
    if lam is not None and target_sparsity is not None:
        err.print("[red]error:[/] give --lam or --target-sparsity, not both")
        raise typer.Exit(EXIT_USAGE)
    usage = continue_usage_error(from_job, model, data, target_sparsity, weights, num_classes, val_fraction)
    if usage is not None:
        err.print(f"[red]error:[/] {escape(usage)}")
        raise typer.Exit(EXIT_USAGE)
    # Options sent as given, only when given (the server's defaults otherwise).
    given = {
        "batch_size": batch_size, "devices": devices, "optimizer": optimizer, "distill": distill,
        "distill_temperature": distill_temperature, "distill_schedule": distill_schedule, "structure": structure,
        "target_macs": target_macs, "cut": cut, "unit_cut": unit_cut, "unit_multiple": unit_multiple,
        "lr_probe": lr_probe, "augment": augment, "precision": precision,
    }  # fmt: skip
    options: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    if threshold is not None:
        options["threshold"] = _parse_threshold(threshold)
    if frontier:
        options["frontier"] = list(frontier)
    if dense_epochs:
        options["dense_epochs"] = dense_epochs
    pairs = _parse_metadata(metadata)
    with _errors(), _client(ctx, server) as client:
        if data is not None and data.startswith("mnist-idx:"):
            err.print(f"converting {escape(data)} to .npz…")
        with _transfer_progress() as transfers:
            if from_job is not None:
                assert target_sparsity is not None  # continue_usage_error
                job = client.continue_job(
                    from_job,
                    target_sparsity=target_sparsity,
                    epochs=epochs,
                    seed=seed,
                    metadata=pairs,
                    idempotency_key=idempotency_key,
                    webhook=webhook,
                    webhook_secret=webhook_secret,
                    **continue_options(depth, lr, method, options),
                )
            else:
                assert model is not None and data is not None  # continue_usage_error
                job = client.submit(
                    model,
                    data,
                    depth=depth,
                    lam=lam,
                    target_sparsity=target_sparsity,
                    epochs=epochs,
                    lr=lr,
                    method=method,
                    weights=weights,
                    num_classes=num_classes,
                    val_fraction=val_fraction,
                    seed=seed,
                    metadata=pairs,
                    idempotency_key=idempotency_key,
                    on_upload=_uploader(transfers),
                    webhook=webhook,
                    webhook_secret=webhook_secret,
                    **options,
                )
        out.print(job.id)
        sys.stdout.flush()
        if job.webhook is not None and job.webhook.secret is not None:
            err.print(f"webhook signing secret (shown once): {job.webhook.secret}", markup=False)
        if not wait:
            err.print(f"submitted {job.id} ({job.status}); follow it with `dwf events {job.id} -f`")
            return
        started = time.monotonic()
        job = _wait(job)
        err.print(f"{escape(_summary(job))} ({_duration(time.monotonic() - started)})")
        if job.status != "succeeded":
            raise typer.Exit(EXIT_ERROR)
        if out_dir is not None:
            _download(client, job.id, out_dir)


# ------------------------------------------------------------------------------------------------ the others


def jobs(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="Only jobs in this status (queued, running, succeeded, failed…)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many (newest first)")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON")] = False,
    server: ServerOption = None,
) -> None:
    """List jobs, newest first."""
    with _errors(), _client(ctx, server) as client:
        page = client.list_jobs(status=status, limit=limit)
    if as_json:
        out.print_json(json.dumps(page.model_dump(mode="json")))
        return
    table = Table(box=None, header_style="bold")
    id_width = max((len(job.id) for job in page.data), default=2)
    table.add_column("ID", no_wrap=True, min_width=id_width)
    table.add_column("STATUS", no_wrap=True, min_width=10)
    for name in ("PROGRESS", "MODEL", "CREATED", "SPARSITY", "ACCURACY"):
        table.add_column(name, overflow="fold")
    for job in page.data:
        m = job.metrics or {}
        prog = job.progress
        if job.status == "running" and prog.epochs:
            progress = f"{job.phase or 'running'} {prog.epoch or 0}/{prog.epochs} {_pct(prog.fraction or 0.0)}"
        else:
            progress = job.phase or "-"
        acc = m.get("test_accuracy", m.get("val_accuracy"))
        table.add_row(
            job.id,
            job.status,
            progress,
            _model_label(job),
            job.created_at[:16].replace("T", " "),
            _pct(m.get("sparsity")),
            _pct(acc),
        )
    out.print(table)
    if page.has_more:
        err.print(f"(more jobs: raise --limit, or page with the API's after={page.last_id})")


def status(
    ctx: typer.Context,
    job_id: JobId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON")] = False,
    server: ServerOption = None,
) -> None:
    """Show one job: status, progress, error or results."""
    with _errors(), _client(ctx, server) as client:
        job = client.get_job(job_id)
    if as_json:
        out.print_json(job.model_dump_json())
        return
    prog, m = job.progress, job.metrics or {}
    rows: list[tuple[str, str]] = [
        ("id", job.id),
        ("status", job.status + (f" ({job.phase})" if job.phase else "")),
        ("model", _model_label(job)),
        ("dataset", str(job.dataset.get("file_id", "-"))),
        ("method", ", ".join(f"{k}={v}" for k, v in job.method.items() if v is not None)),
        ("epoch", f"{prog.epoch}/{prog.epochs}" if prog.epoch is not None else "-"),
        ("progress", _pct(prog.fraction)),
        ("eta", _duration(prog.eta_seconds) if not job.done else "-"),
        ("created", job.created_at),
        ("started", job.started_at or "-"),
        ("finished", job.finished_at or "-"),
        ("attempts", str(job.attempts)),
    ]
    if job.parent_job_id is not None:  # created with --from-job: it started from that job's trained factors
        rows.insert(1, ("continues", job.parent_job_id))
    if job.error is not None:
        where = f" [{job.error.param}]" if job.error.param else ""
        rows.append(("error", f"{job.error.code}: {job.error.message}{where}"))
    if m:
        if "test_accuracy" in m:
            rows.append(("test accuracy", _pct(m.get("test_accuracy"))))
        rows.append(("val accuracy", _pct(m.get("val_accuracy"))))
        rows.append(("sparsity", _pct(m.get("sparsity"))))
        rows.append(("compression", f"{_num(m.get('compression_ratio'), '.1f')}×"))
        if "nnz" in m:
            rows.append(("nnz", f"{m.get('nnz')}/{m.get('total', '-')}"))
        if "train_loss" in m:
            rows.append(("train loss", _num(m.get("train_loss"))))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        out.print(f"[bold]{key:<{width}}[/]  {escape(value)}")


def _print_event(event: Event, as_json: bool) -> None:
    if as_json:
        out.print(event.model_dump_json(), markup=False, highlight=False)
    else:
        out.print(f"{event.created_at}  {event.level:<5} {event.type:<8} {event.message}", markup=False)
    sys.stdout.flush()


def events(
    ctx: typer.Context,
    job_id: JobId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until the job ends")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    server: ServerOption = None,
) -> None:
    """Print a job's events, oldest first; -f follows the live stream until the job ends."""
    with _errors(), _client(ctx, server) as client:
        client.get_job(job_id)  # a clear 404 before any streaming
        try:
            for event in client.follow_events(job_id) if follow else client.iter_events(job_id):
                _print_event(event, as_json)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        if follow:
            err.print(escape(_summary(client.get_job(job_id))))


def cancel(ctx: typer.Context, job_id: JobId, server: ServerOption = None) -> None:
    """Cancel a job: at once before training starts, else at its next training step (the job is kept)."""
    with _errors(), _client(ctx, server) as client:
        job = client.cancel_job(job_id)
    if job.status == "cancelled":
        out.print(f"{job.id} cancelled")
    else:
        out.print(f"{job.id}: cancellation requested (status {job.status}); it stops at its next training step")


def deliveries(
    ctx: typer.Context,
    job_id: JobId,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    server: ServerOption = None,
) -> None:
    """Show a job's webhook deliveries: event, status, attempts, last HTTP status or error."""
    with _errors(), _client(ctx, server) as client:
        rows = client.list_webhook_deliveries(job_id)
    if not rows:
        err.print(f"{job_id} has no webhook deliveries (no webhook was set when its status changed)")
    for row in rows:
        if as_json:
            out.print(row.model_dump_json(), markup=False, highlight=False)
            continue
        result = row.last_error or (f"HTTP {row.last_status_code}" if row.last_status_code else "-")
        line = f"{row.id}  {row.event:<22} {row.status:<9} attempts={row.attempts}  {result}"
        out.print(line, markup=False, highlight=False)


def _download(client: Client, job_id: str, directory: Path) -> None:
    with _transfer_progress() as transfers:
        paths = client.download_artifacts(job_id, directory, on_progress=_downloader(transfers))
    for path in paths:
        out.print(str(path), markup=False)


def download(
    ctx: typer.Context,
    job_id: JobId,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Directory for the artifacts (default ./JOB_ID)")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Download a succeeded job's artifacts (sizes and sha256 checked) and print their paths."""
    with _errors(), _client(ctx, server) as client:
        _download(client, job_id, out_dir or Path(job_id))


def register(app: typer.Typer) -> None:
    """Add the client commands and the global ``--server`` option to the ``dwf`` app."""
    app.callback()(root)
    for command in (submit, jobs, status, events, cancel, download, deliveries):
        app.command()(command)
