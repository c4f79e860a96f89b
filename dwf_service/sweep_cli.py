"""``dwf sweep`` (create a grid of jobs, optionally follow them in a live table), ``dwf sweeps`` (list),
``dwf sweep-status`` and ``dwf sweep-cancel``: the sweep commands of the ``dwf`` client CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from dwf_client.sweeps import Sweep, SweepData
from dwf_service.client_cli import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ServerOption,
    _client,
    _errors,
    _num,
    _parse_metadata,
    _pct,
    err,
    out,
)

SweepId = Annotated[str, typer.Argument(help="A sweep id (swp-…), as printed by `dwf sweep` or `dwf sweeps`")]
# What --grid takes, and how each value is read (the server validates the ranges).
GRID_TYPES: dict[str, type] = {"type": str, "depth": int, "lam": float, "target_sparsity": float, "target_macs": float}


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["target_sparsity=0.9,0.99", "depth=2,3"]`` → ``{"target_sparsity": [0.9, 0.99], "depth": [2, 3]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in GRID_TYPES or not values.strip():
            raise typer.BadParameter(f"{item!r}: give FIELD=V1,V2,… with FIELD one of {', '.join(GRID_TYPES)}")
        if name in grid:
            raise typer.BadParameter(f"{name} is given twice")
        try:
            grid[name] = [GRID_TYPES[name](v.strip()) for v in values.split(",")]
        except ValueError as exc:
            raise typer.BadParameter(f"{item!r}: {exc}") from None
    return grid


def sweep_table(sweep: SweepData) -> Table:
    """One row per child: grid point, status, epoch, accuracy, sparsity, compression."""
    table = Table(box=None, header_style="bold", title=f"{sweep.id}  {sweep.status}", title_justify="left")
    for name in ("JOB", *sweep.grid, "STATUS", "EPOCH", "ACCURACY", "SPARSITY", "CR"):
        table.add_column(name.upper(), no_wrap=True)
    for child in sweep.children:
        epoch = f"{child.epoch}/{child.epochs}" if child.epoch is not None else "-"
        status = child.status + (f" [{child.error_code}]" if child.error_code else "")
        table.add_row(
            child.job_id,
            *(str(child.point.get(name, "-")) for name in sweep.grid),
            escape(status),
            epoch,
            _pct(child.test_accuracy),
            _pct(child.sparsity),
            f"{_num(child.compression_ratio, '.1f')}×" if child.compression_ratio is not None else "-",
        )
    return table


def sweep(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="As for `dwf submit`: zoo/torchvision/timm name, .onnx or config.json")],
    data: Annotated[str, typer.Argument(help="Dataset file (.npz, .safetensors, CSV, image .zip…) or mnist-idx:DIR")],
    grid: Annotated[
        list[str],
        typer.Option(
            "--grid",
            help="FIELD=V1,V2,… with FIELD among type, depth, lam, target_sparsity, target_macs (repeatable; "
            "one job per combination)",
        ),
    ],
    epochs: Annotated[int | None, typer.Option(help="Training epochs of every child (server default 40)")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate of every child")] = None,
    method: Annotated[str | None, typer.Option(help="Method of every child unless the grid varies `type`")] = None,
    structure: Annotated[str | None, typer.Option(help="weights, units or both (as for `dwf submit`)")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="Another method setting of every child, KEY=JSON (e.g. batch_size=256)"),
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Pretrained .safetensors weights")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Output classes of a zoo/torchvision/timm model")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed of every child")] = None,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE kept with the sweep (repeatable)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the children in a live table until all end")] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="With --wait: download frontier.json/.png here at the end")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Create a sweep: one job per combination of the --grid values, run on any free worker; prints its id."""
    try:
        parsed = parse_grid(grid)
        method_options: dict[str, Any] = {"epochs": epochs, "lr": lr, "type": method, "structure": structure}
        for item in option or []:
            key, sep, raw = item.partition("=")
            if not sep:
                raise typer.BadParameter(f"--option {item!r}: give KEY=JSON")
            method_options[key.strip()] = json.loads(raw)
    except (typer.BadParameter, json.JSONDecodeError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None
    with _errors(), _client(ctx, server) as client:
        created = client.submit_sweep(
            model,
            data,
            parsed,
            weights=weights,
            num_classes=num_classes,
            seed=seed,
            metadata=_parse_metadata(metadata),
            **method_options,
        )
        out.print(created.id)
        err.print(f"{len(created.children)} jobs: {', '.join(c.job_id for c in created.children)}")
        if not wait:
            return
        final = _follow(created)
        if out_dir is not None and final.status != "cancelled":
            for path in client.download_sweep_artifacts(final.id, out_dir):
                err.print(f"saved {path}")
    if final.status in ("failed", "partially_failed"):
        raise typer.Exit(EXIT_ERROR)


def _follow(created: Sweep) -> Sweep:
    """The live table until the sweep has finished; Ctrl-C detaches (the children keep running)."""
    try:
        with Live(sweep_table(created), console=err, refresh_per_second=2, transient=True) as live:
            final = created.wait(on_update=lambda s: live.update(sweep_table(s)))
    except KeyboardInterrupt:
        err.print(f"detached; {created.id} keeps running (`dwf sweep-status {created.id}`)")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    out.print(sweep_table(final))
    return final


def sweeps(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many (newest first)")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON")] = False,
    server: ServerOption = None,
) -> None:
    """List sweeps, newest first."""
    with _errors(), _client(ctx, server) as client:
        page = client.list_sweeps(limit=limit)
    if as_json:
        out.print_json(json.dumps(page.model_dump(mode="json")))
        return
    table = Table(box=None, header_style="bold")
    for name in ("ID", "STATUS", "GRID", "CHILDREN", "CREATED"):
        table.add_column(name, no_wrap=name != "GRID")
    for item in page.data:
        done = sum(n for status, n in item.counts.items() if status in ("succeeded", "failed", "cancelled"))
        grid = "; ".join(f"{k}={','.join(map(str, v))}" for k, v in item.grid.items())
        table.add_row(
            item.id, item.status, escape(grid), f"{done}/{len(item.children)}", item.created_at[:16].replace("T", " ")
        )
    out.print(table)


def sweep_status(
    ctx: typer.Context,
    sweep_id: SweepId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON")] = False,
    server: ServerOption = None,
) -> None:
    """Show one sweep: its children's status and results."""
    with _errors(), _client(ctx, server) as client:
        item = client.get_sweep(sweep_id)
    if as_json:
        out.print_json(item.model_dump_json())
        return
    out.print(sweep_table(item))


def sweep_cancel(ctx: typer.Context, sweep_id: SweepId, server: ServerOption = None) -> None:
    """Cancel every unfinished child of a sweep."""
    with _errors(), _client(ctx, server) as client:
        item = client.cancel_sweep(sweep_id)
    err.print(f"{item.id}: {item.status} ({item.counts.get('cancelled', 0)} children cancelled)")


def register(app: typer.Typer) -> None:
    """Add the sweep commands to the ``dwf`` app."""
    app.command()(sweep)
    app.command()(sweeps)
    app.command("sweep-status")(sweep_status)
    app.command("sweep-cancel")(sweep_cancel)
