"""The statement count of a terminal transition (tests/dwf_service/test_transition_queries.py) on real PostgreSQL
15, where UPDATE … RETURNING goes through psycopg: one SELECT, the guarded update, the event and webhook rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dwf_service.context import ServiceContext
from dwf_service.migrate import upgrade_db
from dwf_service.queue import Message
from dwf_service.settings import Settings
from tests.dwf_service.test_transition_queries import CHECKS


@pytest.fixture
def published() -> list[Message]:
    return []


@pytest.fixture
def pg(tmp_path: Path, own_database: str, published: list[Message]) -> Iterator[ServiceContext]:
    """A context on a database of this test's own on the session's PostgreSQL (others expect theirs empty)."""
    settings = Settings(data_dir=tmp_path, database_url=own_database, reconcile_seconds=0)
    upgrade_db(settings.database_url)
    ctx = ServiceContext.create(settings, published.append, use_celery=False)
    try:
        yield ctx
    finally:
        ctx.engine.dispose()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_terminal_transition_statements_on_postgres(check: Any, pg: ServiceContext, published: list[Message]) -> None:
    assert pg.engine.dialect.name == "postgresql" and pg.engine.dialect.update_returning
    check(pg, published)
