"""The ``dwf`` command: ``dwf train`` (dwf_core's local run) and ``dwf serve`` (the embedded job service)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dwf_core.cli import train
from dwf_service.client_cli import register as register_client_commands
from dwf_service.keys_cli import keys_app
from dwf_service.sweep_cli import register as register_sweep_commands
from dwf_service.webhook_cli import webhook_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Deep Weight Factorization: sparse models.")
app.command()(train)
register_client_commands(app)
register_sweep_commands(app)
app.add_typer(keys_app, name="keys")
app.add_typer(webhook_app, name="webhook")


# Each embedded worker trains one job at a time in its own process; more than the cores only adds contention.
MAX_EMBEDDED_WORKERS = 32


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Database, blobs, broker and checkpoints (default $DWF_DATA_DIR or ~/.local/share/dwf)"),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=MAX_EMBEDDED_WORKERS, help="Worker processes, each training one job at a time")
    ] = 1,
) -> None:
    """Run the job service: REST API plus Celery workers (one by default), on SQLite and a local blob folder."""
    from dwf_service.serve import serve as run_serve
    from dwf_service.settings import SettingsError, load_settings

    if data_dir is not None:
        os.environ["DWF_DATA_DIR"] = str(data_dir.expanduser().resolve())
    try:
        settings = load_settings()
    except SettingsError as exc:  # e.g. a DWF_API_KEY that could never match: refuse to start, in one line
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    run_serve(settings, host, port, echo=typer.echo, workers=workers)


def main() -> None:
    """Entry point of the ``dwf`` console script."""
    app()


if __name__ == "__main__":
    main()
