"""GET /v1/sweeps loads the children of a whole page in one query: its SQL statement count does not grow with the
number of sweeps on the page, and each sweep in the list is exactly what GET /v1/sweeps/{id} answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dwf_service import jobs
from dwf_service.auth import add_key
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.queue import Message
from tests.api.conftest import API_KEY
from tests.api.test_sweeps import sweep_body
from tests.service_helpers import make_context, make_settings
from tests.sql_statements import recorded_executions, recorded_statements, verbs


@pytest.fixture
def ctx(tmp_path: Path, published: list[Message]) -> ServiceContext:
    """The API's context (as in conftest) with room for the 21 unfinished children of six sweeps."""
    settings = make_settings(tmp_path / "data", max_upload_bytes=2**20, quota_max_active_jobs=40)
    context = make_context(settings, published)
    with session_scope(context.sessions) as session:
        add_key(session, API_KEY)
    return context


def _new_sweeps(client: TestClient, files: dict[str, Any], n: int) -> list[dict[str, Any]]:
    created = []
    for i in range(n):
        grid = {"target_sparsity": [0.9, 0.99], "depth": [2, 3]} if i % 2 else {"depth": [2, 3, 4]}
        resp = client.post("/v1/sweeps", json=sweep_body(files, grid))
        assert resp.status_code == 200, resp.text
        created.append(resp.json())
    return created


def _listing_statements(ctx: ServiceContext, client: TestClient, **params: Any) -> tuple[dict[str, Any], list[str]]:
    with recorded_statements(ctx.engine) as statements:
        resp = client.get("/v1/sweeps", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json(), verbs(statements)


def test_listing_sweeps_takes_the_same_queries_for_2_or_6_sweeps(
    client: TestClient, ctx: ServiceContext, files: dict[str, Any]
) -> None:
    first = _new_sweeps(client, files, 2)
    # One child of the first sweep has ended, so the page mixes children's statuses and metrics.
    child = first[0]["children"][0]["job_id"]
    with session_scope(ctx.sessions) as session:
        metrics = {"test_accuracy": 0.97, "compression_ratio": 10.0, "sparsity": 0.9}
        assert jobs.finish(session, child, jobs.SUCCEEDED, metrics=metrics)
    client.get("/v1/sweeps")  # warm-up: the first request of a test client may do one-time work
    two, with_two = _listing_statements(ctx, client)
    assert len(two["data"]) == 2
    _new_sweeps(client, files, 4)
    six, with_six = _listing_statements(ctx, client)
    assert len(six["data"]) == 6 and sum(len(s["children"]) for s in six["data"]) == 3 * (3 + 4)
    assert with_six == with_two
    # The sweeps and their children: one query each, whatever the page size (before: one per sweep for children).
    assert with_six.count("SELECT jobs") == 1 and with_six.count("SELECT sweeps") == 1
    # Same JSON as before the batching: each listed sweep is what its own GET answers (that path loads it alone).
    for listed in six["data"]:
        assert client.get(f"/v1/sweeps/{listed['id']}").json() == listed
    done = next(s for s in six["data"] if s["id"] == first[0]["id"])
    assert done["counts"]["succeeded"] == 1 and done["children"][0]["test_accuracy"] == 0.97


def test_a_page_of_the_listing_loads_only_its_own_sweeps_children(
    client: TestClient, ctx: ServiceContext, files: dict[str, Any]
) -> None:
    created = _new_sweeps(client, files, 5)
    newest_first = [s["id"] for s in reversed(created)]
    page, statements = _listing_statements(ctx, client, limit=2)
    assert [s["id"] for s in page["data"]] == newest_first[:2] and page["has_more"] is True
    assert statements.count("SELECT jobs") == 1
    rest = client.get("/v1/sweeps", params={"after": page["last_id"]}).json()
    assert [s["id"] for s in rest["data"]] == newest_first[2:] and rest["has_more"] is False
    for listed in page["data"] + rest["data"]:
        assert [c["job_id"] for c in listed["children"]] == [
            c["job_id"] for c in next(s for s in created if s["id"] == listed["id"])["children"]
        ]


def test_an_empty_listing_does_not_query_children(client: TestClient, ctx: ServiceContext) -> None:
    page, statements = _listing_statements(ctx, client)
    assert page["data"] == [] and page["has_more"] is False
    assert "SELECT jobs" not in statements


def test_the_childrens_query_searches_the_sweep_id_index(
    client: TestClient, ctx: ServiceContext, files: dict[str, Any]
) -> None:
    """ix_jobs_sweep_id (migration 0003) serves the page's children query: no scan of every job."""
    _new_sweeps(client, files, 3)
    with recorded_executions(ctx.engine) as executions:
        assert client.get("/v1/sweeps").status_code == 200
    ((sql, params),) = [(sql, params) for sql, params in executions if verbs([sql]) == ["SELECT jobs"]]
    assert "jobs.sweep_id IN" in sql
    with ctx.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "USING INDEX ix_jobs_sweep_id" in plan, plan
