"""``dwf keys``: keys shown once and stored hashed, per tenant; list never shows a key; revoke; tenant quotas."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from dwf_service.auth import find_key
from dwf_service.cli import app
from dwf_service.context import ServiceContext
from dwf_service.models import DEFAULT_TENANT_ID, ApiKey, Tenant
from dwf_service.serve import ensure_api_key

runner = CliRunner()


@pytest.fixture(autouse=True)
def _default_quotas(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DWF_QUOTA_* defaults, whatever the environment says."""
    for name in ("MAX_ACTIVE_JOBS", "MAX_STORED_BYTES", "MAX_EPOCH_EXAMPLES"):
        monkeypatch.delenv(f"DWF_QUOTA_{name}", raising=False)


def _dwf(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _create(data_dir: Path, tenant: str, name: str = "ci") -> str:
    code, out, err = _dwf("keys", "create", "--tenant", tenant, "--name", name, "--data-dir", str(data_dir))
    assert code == 0, err
    assert "shown only now" in err
    key = out.strip()
    assert key.startswith("dwf_") and len(key) > 40 and "\n" not in key
    return key


def test_create_stores_only_a_hash_and_creates_the_tenant(ctx: ServiceContext) -> None:
    data_dir = ctx.settings.data_dir
    key = _create(data_dir, "acme", name="ci runner")
    again = _create(data_dir, "acme")
    assert again != key
    with ctx.sessions() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        rows = session.scalars(select(ApiKey).where(ApiKey.tenant_id == acme.id)).all()
        assert {r.name for r in rows} == {"ci runner", "ci"}
        assert all(key not in (r.key_hash, r.salt) for r in rows)
        found = find_key(session, key)
        assert found is not None and found.tenant_id == acme.id and found.tenant_id != DEFAULT_TENANT_ID
    assert key not in (data_dir / "dwf.db").read_bytes().decode("latin-1")


def test_list_shows_ids_and_tenants_never_keys(ctx: ServiceContext) -> None:
    data_dir = ctx.settings.data_dir
    key_a, key_b = _create(data_dir, "acme"), _create(data_dir, "bravo", name="bee")
    code, out, _ = _dwf("keys", "list", "--data-dir", str(data_dir))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["ID", "PREFIX", "TENANT", "NAME", "CREATED", "REVOKED"]
    assert [line.split()[2] for line in lines[1:]] == ["acme", "bravo"]
    assert lines[2].split()[3:] == ["bee", lines[2].split()[4], "no"] and lines[2].split()[0].startswith("key-")
    assert key_a not in out and key_b not in out
    code, out, _ = _dwf("keys", "list", "--tenant", "bravo", "--data-dir", str(data_dir))
    assert len(out.strip().splitlines()) == 2 and "bravo" in out and "acme" not in out


def test_revoke_by_id_or_prefix(ctx: ServiceContext) -> None:
    data_dir = ctx.settings.data_dir
    first, second = _create(data_dir, "acme"), _create(data_dir, "acme")
    with ctx.sessions() as session:
        found = find_key(session, first)
        assert found is not None
        first_id = found.id
    code, out, _ = _dwf("keys", "revoke", first_id, "--data-dir", str(data_dir))
    assert code == 0 and first_id in out
    code, _, _ = _dwf("keys", "revoke", second[:12], "--data-dir", str(data_dir))
    assert code == 0
    with ctx.sessions() as session:
        assert find_key(session, first) is None and find_key(session, second) is None
        assert all(r.revoked for r in session.scalars(select(ApiKey)))
    _, out, _ = _dwf("keys", "list", "--data-dir", str(data_dir))
    assert [line.split()[-1] for line in out.strip().splitlines()[1:]] == ["yes", "yes"]
    code, _, err = _dwf("keys", "revoke", "key-nope", "--data-dir", str(data_dir))
    assert code == 1 and "no key 'key-nope'" in err


def test_serve_key_and_cli_keys_of_default_share_the_default_tenant(ctx: ServiceContext) -> None:
    served = ensure_api_key(ctx, "http://127.0.0.1:8000")
    assert served is not None
    extra = _create(ctx.settings.data_dir, "default")
    with ctx.sessions() as session:
        a, b = find_key(session, served), find_key(session, extra)
        assert a is not None and b is not None and a.tenant_id == b.tenant_id == DEFAULT_TENANT_ID
        assert session.scalars(select(Tenant)).one().name == "default"
    assert ensure_api_key(ctx, "http://127.0.0.1:8000") is None  # a restart still reuses the served key


@pytest.mark.parametrize("name", ["Upper", "", "a b", "x" * 65, "-lead"])
def test_bad_tenant_names_are_refused(ctx: ServiceContext, name: str) -> None:
    code, out, err = _dwf("keys", "create", "--tenant", name, "--data-dir", str(ctx.settings.data_dir))
    assert code == 1 and "tenant name" in err and out == ""


def test_quota_shows_sets_and_resets_a_tenants_limits(ctx: ServiceContext) -> None:
    data_dir = str(ctx.settings.data_dir)
    _create(ctx.settings.data_dir, "acme")
    code, out, _ = _dwf(
        "keys", "quota", "acme", "--max-active-jobs", "2", "--max-stored-bytes", "0", "--data-dir", data_dir
    )
    assert code == 0, out
    assert "max_active_jobs: 2 (tenant, in use 0)" in out
    assert "max_stored_bytes: unlimited (tenant, in use 0)" in out
    assert "max_epoch_examples: 100000000 (default)" in out
    with ctx.sessions() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        assert (acme.max_active_jobs, acme.max_stored_bytes, acme.max_epoch_examples) == (2, 0, None)
    code, out, _ = _dwf("keys", "quota", "acme", "--reset", "--data-dir", data_dir)
    assert code == 0 and "max_active_jobs: 10 (default, in use 0)" in out
    code, _, err = _dwf("keys", "quota", "nobody", "--data-dir", data_dir)
    assert code == 1 and "no tenant 'nobody'" in err
    code, _, err = _dwf("keys", "quota", "acme", "--max-active-jobs", "-1", "--data-dir", data_dir)
    assert code == 1 and "must be ≥ 0" in err
