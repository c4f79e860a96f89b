"""Fixtures: a migrated SQLite database and local storage in a temp dir, with a recording publisher."""

from __future__ import annotations

from pathlib import Path

import pytest

from dwf_service.context import ServiceContext
from dwf_service.queue import Message
from tests.service_helpers import make_context, make_settings


@pytest.fixture
def published() -> list[Message]:
    """Messages the code under test sent to the broker."""
    return []


@pytest.fixture
def ctx(tmp_path: Path, published: list[Message]) -> ServiceContext:
    """A service context on a fresh database."""
    return make_context(make_settings(tmp_path / "data", max_attempts=2), published)
