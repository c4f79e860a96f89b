"""T14: property-based fuzzing of every operation in the app's own OpenAPI schema, in process (ASGI).

Each operation gets a bounded number of generated requests, sent with a valid API key; every response must
be a non-5xx, carry a documented status code and match the documented response schema. Run alone with
``.venv/bin/pytest tests/api/test_schemathesis.py -q`` (about 20 s on 2 cores).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from dwf_service.auth import add_key
from dwf_service.db import session_scope
from tests.service_helpers import make_context, make_settings

API_KEY = "dwf_fuzz-key-0123456789abcdefghijklmnop"
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, ignored_auth]
# Bounded so the whole module stays well under 60 s on the 2-core box (about 20 operations).
MAX_EXAMPLES = 25
# Reviewed allowlist (reliability-tests.md T14): responses that are correct but not yet in the schema. (A body
# that is not UTF-8 JSON answers 400, FastAPI's "error parsing the body": documented in api/app.py ERROR_RESPONSES.)
ALLOWED_UNDOCUMENTED: set[tuple[str, int]] = set()


def _fuzz_app() -> tuple[FastAPI, Path]:
    """A fresh app (SQLite, local storage, a recording publisher, one API key) in its own temp dir.

    Built at import time: schemathesis' pytest plugin needs the schema when the module is collected
    (its fixture-based loader, ``schemathesis.pytest.from_fixture``, breaks on pytest 9).
    """
    root = Path(tempfile.mkdtemp(prefix="dwf-fuzz-"))
    ctx = make_context(make_settings(root / "data", max_upload_bytes=2**20), [])
    with session_scope(ctx.sessions) as session:
        add_key(session, API_KEY)
    return create_app(ctx.settings, context=ctx, reconciler=False), root


APP, ROOT = _fuzz_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    shutil.rmtree(ROOT, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_conforms_to_its_schema(case: Any) -> None:
    # The API reads the key from a plain `Authorization` header parameter, which the generator would
    # otherwise fill with random strings: pin a valid key so the requests reach the route bodies.
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    headers["Authorization"] = f"Bearer {API_KEY}"
    case.headers = headers
    response = case.call()
    checks = CHECKS
    if (case.operation.label, response.status_code) in ALLOWED_UNDOCUMENTED:
        assert response.json()["error"]["code"] == f"http_{response.status_code}"
        checks = [c for c in CHECKS if c is not status_code_conformance]
    case.validate_response(response, checks=checks)


def test_schema_lists_the_public_operations() -> None:
    raw = schema.raw_schema
    paths = set(raw["paths"])
    assert {"/v1/files", "/v1/files/{file_id}", "/v1/jobs", "/v1/jobs/{job_id}"} <= paths
    # Every /v1 operation documents the error envelope for 401 (the key is checked before the route runs).
    for path, ops in raw["paths"].items():
        if path.startswith("/v1/"):
            for op in ops.values():
                assert "401" in op["responses"], f"{path} lacks a documented 401"


def test_upload_route_is_in_the_schema_as_multipart() -> None:
    body = schema.raw_schema["paths"]["/v1/files"]["post"]["requestBody"]
    assert "multipart/form-data" in body["content"]


def test_the_pinned_key_reaches_the_routes() -> None:
    """The fuzzed requests are authenticated (else every case would stop at 401 and prove little)."""
    op = schema["/v1/files"]["GET"]
    authed = op.Case(headers={"Authorization": f"Bearer {API_KEY}"}, query={"limit": 5}).call()
    assert authed.status_code == 200 and authed.json()["object"] == "list"
    assert op.Case(query={"limit": 5}).call().status_code == 401
