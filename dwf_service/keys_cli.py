"""``dwf keys``: create, list and revoke API keys of tenants, and set a tenant's quotas.

A key is printed once, when created; the database keeps only its salted hash. ``dwf serve`` makes the key of the
tenant "default"; ``dwf keys create --tenant NAME`` makes keys of other tenants (creating the tenant).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from dwf_service.settings import Settings

DataDir = Annotated[
    Path | None,
    typer.Option(help="The service's data folder (default $DWF_DATA_DIR or ~/.local/share/dwf)"),
]

keys_app = typer.Typer(no_args_is_help=True, help="API keys of tenants, and tenant quotas.")


def _settings(data_dir: Path | None) -> Settings:
    """The service's settings, or exit with a one-line error (e.g. a DWF_API_KEY that could never match)."""
    from dwf_service.settings import SettingsError, load_settings

    try:
        return load_settings() if data_dir is None else load_settings(data_dir=data_dir.expanduser().resolve())
    except SettingsError as exc:
        raise _fail(str(exc)) from None


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    """A committed-on-success session on the migrated database of ``settings``."""
    from sqlalchemy.orm import sessionmaker

    from dwf_service.db import make_engine, session_scope
    from dwf_service.migrate import upgrade_db

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_db(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(sessionmaker(engine, expire_on_commit=False)) as session:
            yield session
    finally:
        engine.dispose()


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


@keys_app.command("create")
def create(
    tenant: Annotated[str, typer.Option(help="The tenant the key belongs to (created if missing)")],
    name: Annotated[str, typer.Option(help="A label for the key")] = "default",
    data_dir: DataDir = None,
) -> None:
    """Create an API key and print it (only this once; it is stored hashed)."""
    from dwf_service.auth import add_key, generate_key

    key = generate_key()
    try:
        with _session(_settings(data_dir)) as session:
            row = add_key(session, key, name=name[:128], tenant=tenant)
            key_id = row.id
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"created {key_id} for tenant {tenant!r}; the key is shown only now:", err=True)
    typer.echo(key)


@keys_app.command("revoke")
def revoke(
    key: Annotated[
        str, typer.Argument(help="The key's id (key-…), its prefix as `dwf keys list` shows it, or the key")
    ],
    data_dir: DataDir = None,
) -> None:
    """Revoke a key: requests with it are answered 401 from now on."""
    from dwf_service.auth import find_key
    from dwf_service.models import ApiKey

    with _session(_settings(data_dir)) as session:
        rows = list(session.scalars(select(ApiKey).where(or_(ApiKey.id == key, ApiKey.prefix == key))))
        if not rows and (found := find_key(session, key)) is not None:
            rows = [found]
        if not rows:
            raise _fail(f"no key {key!r}")
        if len(rows) > 1:
            raise _fail(f"{key!r} matches {len(rows)} keys ({', '.join(r.id for r in rows)}); give the id")
        rows[0].revoked = True
        key_id = rows[0].id
    typer.echo(f"revoked {key_id}")


@keys_app.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys")] = None,
    data_dir: DataDir = None,
) -> None:
    """List keys: id, prefix, tenant, label, creation time and whether revoked (never the key itself)."""
    from dwf_service.models import ApiKey, Tenant

    with _session(_settings(data_dir)) as session:
        query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.created_at)
        if tenant is not None:
            query = query.where(Tenant.name == tenant)
        rows = session.execute(query).all()
    typer.echo(f"{'ID':<31} {'PREFIX':<12} {'TENANT':<20} {'NAME':<20} {'CREATED':<20} REVOKED")
    for key, tenant_name in rows:
        created = key.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        revoked = "yes" if key.revoked else "no"
        typer.echo(f"{key.id:<31} {key.prefix:<12} {tenant_name:<20} {key.name:<20} {created:<20} {revoked}")


@keys_app.command("quota")
def quota(
    tenant: Annotated[str, typer.Argument(help="The tenant's name")],
    max_active_jobs: Annotated[int | None, typer.Option(help="Unfinished jobs at once (0 = unlimited)")] = None,
    max_stored_bytes: Annotated[int | None, typer.Option(help="Bytes of uploads + artifacts (0 = unlimited)")] = None,
    max_epoch_examples: Annotated[
        int | None, typer.Option(help="epochs × training examples of one job (0 = unlimited)")
    ] = None,
    reset: Annotated[bool, typer.Option(help="Drop this tenant's own limits: use the DWF_QUOTA_* defaults")] = False,
    data_dir: DataDir = None,
) -> None:
    """Show a tenant's quotas; with options, set its own limits (they override the DWF_QUOTA_* defaults)."""
    from dwf_service.auth import get_tenant
    from dwf_service.quotas import active_jobs, limits_for, stored_bytes

    for option, value in (
        ("--max-active-jobs", max_active_jobs),
        ("--max-stored-bytes", max_stored_bytes),
        ("--max-epoch-examples", max_epoch_examples),
    ):
        if value is not None and value < 0:
            raise _fail(f"{option} must be ≥ 0 (0 = unlimited)")
    settings = _settings(data_dir)
    with _session(settings) as session:
        row = get_tenant(session, tenant)
        if row is None:
            raise _fail(f"no tenant {tenant!r} (`dwf keys create --tenant {tenant}` creates it)")
        if reset:
            row.max_active_jobs = row.max_stored_bytes = row.max_epoch_examples = None
        if max_active_jobs is not None:
            row.max_active_jobs = max_active_jobs
        if max_stored_bytes is not None:
            row.max_stored_bytes = max_stored_bytes
        if max_epoch_examples is not None:
            row.max_epoch_examples = max_epoch_examples
        limits = limits_for(row, settings)
        used = {"max_active_jobs": active_jobs(session, row.id), "max_stored_bytes": stored_bytes(session, row.id)}
        own = {
            "max_active_jobs": row.max_active_jobs,
            "max_stored_bytes": row.max_stored_bytes,
            "max_epoch_examples": row.max_epoch_examples,
        }
    typer.echo(f"tenant {tenant} ({row.id})")
    for field, limit in asdict(limits).items():
        source = "tenant" if own[field] is not None else "default"
        shown = "unlimited" if limit == 0 else str(limit)
        usage = f", in use {used[field]}" if field in used else ""
        typer.echo(f"  {field}: {shown} ({source}{usage})")
