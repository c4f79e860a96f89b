"""Settings derivation and validators, migrations matching the models, API-key hashing."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from pydantic import ValidationError
from sqlalchemy import select

from dwf_service.auth import add_key, find_key, generate_key, has_keys
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.migrate import alembic_config, upgrade_db
from dwf_service.models import ApiKey
from dwf_service.settings import Settings


def test_embedded_defaults_derive_from_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DWF_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path}/dwf.db"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path}/broker.db"
    assert settings.storage == "local" and settings.blob_dir == tmp_path / "blobs"


def test_heartbeat_must_fit_twice_in_the_lease(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="heartbeat_seconds"):
        Settings(data_dir=tmp_path, lease_seconds=10, heartbeat_seconds=6)


def test_migrations_match_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    upgrade_db(url)
    upgrade_db(url)  # idempotent
    command.check(alembic_config(url))  # raises when the models differ from the migrated schema


def test_api_keys_are_stored_hashed(ctx: ServiceContext) -> None:
    key = generate_key()
    with session_scope(ctx.sessions) as session:
        assert not has_keys(session)
        add_key(session, key)
        add_key(session, key)
    with ctx.sessions() as session:
        rows = session.scalars(select(ApiKey)).all()
        assert len(rows) == 1 and key not in (rows[0].key_hash, rows[0].salt, rows[0].prefix * 3)
        assert find_key(session, key) is not None
        assert find_key(session, key[:-1] + ("a" if key[-1] != "a" else "b")) is None
