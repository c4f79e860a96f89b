"""Migration 0002 on a populated 0001 database: every row goes to the "default" tenant, nothing is lost."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import text

from dwf_service.auth import find_key
from dwf_service.db import make_engine, make_session_factory
from dwf_service.migrate import alembic_config, upgrade_db
from dwf_service.models import DEFAULT_TENANT_ID

KEY = "dwf_pre-tenancy-key-0123456789abcdef"


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        counts = {
            t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in ("api_keys", "files", "jobs", "job_events", "artifacts", "job_results")
        }
    engine.dispose()
    return counts


def test_upgrade_keeps_rows_and_gives_them_the_default_tenant(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0001")
    engine = make_engine(url)
    with engine.begin() as conn:
        # The 0001 schema, written as 0001's code would have (no tenant columns yet).
        from dwf_service.auth import _hash, _lookup_prefix

        conn.execute(
            text("INSERT INTO api_keys VALUES ('key-1', :p, 's', :h, 'dwf serve', '2026-11-25 21:00:00', 0)"),
            {"p": _lookup_prefix(KEY), "h": _hash("s", KEY)},
        )
        conn.execute(
            text(
                "INSERT INTO files (id, bytes, sha256, filename, purpose, format, storage_key, created_at, updated_at)"
                " VALUES ('file-1', 1, 'x', 'd.npz', 'dataset', 'npz', 'files/file-1', '2026-11-25', '2026-11-25')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, status, request, attempts, cancel_requested, idempotency_key, created_at,"
                " updated_at) VALUES ('job-1', 'succeeded', '{}', 1, 0, 'idem', '2026-11-25', '2026-11-25')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, created_at, level, type, message)"
                " VALUES ('job-1', '2026-11-25', 'info', 'message', 'job succeeded')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO artifacts (job_id, name, bytes, sha256, storage_key, created_at)"
                " VALUES ('job-1', 'metrics.json', 2, 'x', 'jobs/job-1/metrics.json', '2026-11-25')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO job_results (job_id, sparse_weights, metrics, created_at)"
                " VALUES ('job-1', x'00', '{}', '2026-11-25')"
            )
        )
    engine.dispose()
    before = _counts(url)

    upgrade_db(url)

    assert _counts(url) == before  # rebuilding jobs did not cascade into its events, artifacts and results
    engine = make_engine(url)
    with engine.connect() as conn:
        for table in ("api_keys", "files", "jobs"):
            assert conn.execute(text(f"SELECT DISTINCT tenant_id FROM {table}")).scalars().all() == [DEFAULT_TENANT_ID]
        assert conn.execute(text("SELECT id, name FROM tenants")).all() == [(DEFAULT_TENANT_ID, "default")]
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    with make_session_factory(engine)() as session:
        found = find_key(session, KEY)
        assert found is not None and found.tenant_id == DEFAULT_TENANT_ID  # `dwf serve`'s old key still works
    engine.dispose()
    command.check(cfg)

    command.downgrade(cfg, "0001")
    assert _counts(url) == before
    upgrade_db(url)
    assert _counts(url) == before
