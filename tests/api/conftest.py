"""Fixtures: the API on a fresh SQLite database and local storage, a key, and a recording publisher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dwf_service.auth import add_key
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.queue import Message
from tests.service_helpers import make_context, make_settings

API_KEY = "dwf_test-key-0123456789abcdefghijklmnop"


@pytest.fixture
def published() -> list[Message]:
    """Messages the API sent to the broker."""
    return []


@pytest.fixture
def ctx(tmp_path: Path, published: list[Message]) -> ServiceContext:
    """The API's service context, with one API key."""
    context = make_context(make_settings(tmp_path / "data", max_upload_bytes=2**20), published)
    with session_scope(context.sessions) as session:
        add_key(session, API_KEY)
    return context


@pytest.fixture
def client(ctx: ServiceContext) -> Iterator[TestClient]:
    """An authenticated test client."""
    app = create_app(ctx.settings, context=ctx, reconciler=False)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as test_client:
        yield test_client


# A second tenant's key: "bravo" (the ``client`` above is the "default" tenant's).
KEY_B = "dwf_tenant-b-key-0123456789abcdefghijkl"


@pytest.fixture
def client_b(ctx: ServiceContext) -> Iterator[TestClient]:
    """A client of a second tenant, "bravo"."""
    with session_scope(ctx.sessions) as session:
        add_key(session, KEY_B, name="b", tenant="bravo")
    app = create_app(ctx.settings, context=ctx, reconciler=False)
    with TestClient(app, headers={"Authorization": f"Bearer {KEY_B}"}) as test_client:
        yield test_client


@pytest.fixture
def files(client: TestClient) -> dict[str, Any]:
    """A model (an ONNX header) and a dataset (.npz) file of the default tenant."""
    from tests.api.test_files import ONNX_HEAD, npz_bytes, upload

    return {
        "model": upload(client, ONNX_HEAD, "m.onnx", "model")["id"],
        "dataset": upload(client, npz_bytes(), "d.npz", "dataset")["id"],
    }
