"""``dwf webhook set|show|remove``: the calling tenant's webhook (``PUT``/``GET``/``DELETE /v1/webhook``), called
on every status change of its jobs that have none of their own. ``dwf deliveries JOB`` shows what was sent."""

from __future__ import annotations

from typing import Annotated

import typer

from dwf_service.client_cli import EXIT_ERROR, ServerOption, _client, _errors, err, out

webhook_app = typer.Typer(no_args_is_help=True, help="Your webhook: a URL POSTed (signed) on every job status change.")


@webhook_app.command("set")
def set_webhook(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="http(s) URL that receives the signed JSON events")],
    secret: Annotated[
        str | None,
        typer.Option(
            envvar="DWF_WEBHOOK_SECRET",
            show_envvar=True,
            help="Signing secret, 16-128 characters (default: generated, printed once)",
        ),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Set (or replace) the webhook; a generated secret is printed once, on stderr."""
    with _errors(), _client(ctx, server) as client:
        info = client.set_webhook(url, secret=secret)
    out.print(info.url, markup=False)
    if info.secret is not None:
        err.print(f"webhook signing secret (shown once): {info.secret}", markup=False)


@webhook_app.command("show")
def show_webhook(ctx: typer.Context, server: ServerOption = None) -> None:
    """Print the webhook's URL (its secret is never shown again); exit 1 when none is set."""
    with _errors(), _client(ctx, server) as client:
        info = client.get_webhook()
    if info is None:
        err.print("no webhook is set (`dwf webhook set URL`)")
        raise typer.Exit(EXIT_ERROR)
    out.print(info.url, markup=False)


@webhook_app.command("remove")
def remove_webhook(ctx: typer.Context, server: ServerOption = None) -> None:
    """Remove the webhook (deliveries not yet sent are dropped, marked failed)."""
    with _errors(), _client(ctx, server) as client:
        removed = client.delete_webhook()
    err.print("webhook removed" if removed else "no webhook was set")
