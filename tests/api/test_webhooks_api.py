"""Webhook routes: a job's webhook at creation (secret shown once), the tenant's webhook (PUT/GET/DELETE), the
deliveries list, URL rules (SSRF setting), typed errors and tenant isolation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from dwf_service import jobs, webhooks
from dwf_service.auth import add_key
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job, JobEvent, WebhookDelivery
from dwf_service.queue import Message
from tests.api.conftest import API_KEY
from tests.api.test_jobs import body
from tests.service_helpers import make_context, make_settings
from tests.webhook_receiver import running_receiver

SECRET = "whsec_user-chosen-secret-0123"


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    return error


def _everything_stored(ctx: ServiceContext) -> str:
    """Every text the service keeps about jobs and deliveries, to look for a leaked secret."""
    with ctx.sessions() as session:
        parts = [json.dumps(job.request) for job in session.scalars(select(Job))]
        parts += [e.message + json.dumps(e.data) for e in session.scalars(select(JobEvent))]
        parts += [json.dumps(d.payload) + (d.last_error or "") for d in session.scalars(select(WebhookDelivery))]
    return "\n".join(parts)


def test_a_generated_job_secret_is_answered_once(
    client: TestClient, files: dict[str, Any], ctx: ServiceContext
) -> None:
    resp = client.post("/v1/jobs", json=body(files) | {"webhook": {"url": "https://example.com/hook"}})
    assert resp.status_code == 200, resp.text
    job = resp.json()
    secret = job["webhook"]["secret"]
    assert job["webhook"]["url"] == "https://example.com/hook" and secret.startswith("whsec_")
    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert again["webhook"] == {"url": "https://example.com/hook", "secret": None}
    listed = client.get("/v1/jobs").json()["data"][0]
    assert listed["webhook"]["secret"] is None
    with ctx.sessions() as session:
        row = session.get(Job, job["id"])
        assert row is not None and row.webhook_secret == secret and "webhook" not in row.request
    for text in (again, listed, client.get(f"/v1/jobs/{job['id']}/events").json()):
        assert secret not in json.dumps(text)
    assert secret not in _everything_stored(ctx)


def test_a_given_job_secret_is_never_answered(client: TestClient, files: dict[str, Any], ctx: ServiceContext) -> None:
    resp = client.post("/v1/jobs", json=body(files) | {"webhook": {"url": "https://example.com/h", "secret": SECRET}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["webhook"] == {"url": "https://example.com/h", "secret": None}
    assert SECRET not in resp.text and SECRET not in _everything_stored(ctx)
    (delivery,) = client.get(f"/v1/jobs/{resp.json()['id']}/webhook_deliveries").json()["data"]
    assert delivery["event"] == "job.validating_files" and delivery["url"] == "https://example.com/h"
    assert "secret" not in delivery


def test_an_idempotent_repeat_replays_the_job_without_the_secret(client: TestClient, files: dict[str, Any]) -> None:
    request = body(files) | {"webhook": {"url": "https://example.com/hook"}}
    first = client.post("/v1/jobs", json=request, headers={"Idempotency-Key": "k-1"}).json()
    repeat = client.post("/v1/jobs", json=request, headers={"Idempotency-Key": "k-1"})
    assert repeat.status_code == 200 and repeat.json()["id"] == first["id"]
    assert repeat.json()["webhook"]["secret"] is None
    other_url = body(files) | {"webhook": {"url": "https://example.com/other"}}
    error = _error(client.post("/v1/jobs", json=other_url, headers={"Idempotency-Key": "k-1"}), 409)
    assert error["code"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    ("webhook", "param", "message"),
    [
        ({"url": "ftp://example.com/x"}, "webhook.url", "http:// or https://"),
        ({"url": "https://u:p@example.com/x"}, "webhook.url", "credentials"),
        ({"url": "https://example.com/" + "a" * 2100}, "webhook.url", "2048"),
        ({"url": "https://example.com/x", "secret": "short"}, "webhook.secret", "at least 16"),
        ({"url": "https://example.com/x", "secret": "s" * 129}, "webhook.secret", "at most 128"),
        ({"url": "https://example.com/x", "secret": "with spaces in the secret"}, "webhook.secret", "printable"),
        ({"url": "https://example.com/x", "events": ["job.succeeded"]}, "webhook.events", "Extra inputs"),
    ],
)
def test_bad_webhooks_are_422_naming_the_field(
    client: TestClient, files: dict[str, Any], webhook: dict[str, Any], param: str, message: str
) -> None:
    error = _error(client.post("/v1/jobs", json=body(files) | {"webhook": webhook}), 422)
    assert error["param"] == param and message in error["message"]
    assert "secret" not in webhook or webhook["secret"] not in error["message"]  # the refused secret is not echoed


@pytest.fixture
def production_client(tmp_path: Path, published: list[Message]) -> Iterator[TestClient]:
    ctx = make_context(make_settings(tmp_path / "prod", env="production", max_upload_bytes=2**20), published)
    with session_scope(ctx.sessions) as session:
        add_key(session, API_KEY)
    with TestClient(create_app(ctx.settings, context=ctx, reconciler=False)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {API_KEY}"
        yield test_client


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/hook", "http://localhost/hook", "http://169.254.169.254/"])
def test_production_refuses_private_webhook_urls(production_client: TestClient, url: str) -> None:
    for resp, param in (
        (production_client.put("/v1/webhook", json={"url": url}), "url"),
        (production_client.post("/v1/jobs", json=_named_job() | {"webhook": {"url": url}}), "webhook.url"),
    ):
        error = _error(resp, 422)
        assert (error["code"], error["param"]) == ("invalid_webhook_url", param)


def _named_job() -> dict[str, Any]:
    return {"model": {"name": "lenet_300_100"}, "dataset": {"file_id": "file-missing"}, "method": {"epochs": 1}}


def test_dev_allows_local_webhook_urls(client: TestClient) -> None:
    assert client.put("/v1/webhook", json={"url": "http://127.0.0.1:9000/hook"}).status_code == 200


def test_tenant_webhook_put_get_delete(client: TestClient, files: dict[str, Any], ctx: ServiceContext) -> None:
    assert _error(client.get("/v1/webhook"), 404)["code"] == "webhook_not_found"
    assert _error(client.delete("/v1/webhook"), 404)["code"] == "webhook_not_found"
    created = client.put("/v1/webhook", json={"url": "https://example.com/tenant"}).json()
    assert created["object"] == "webhook" and created["secret"].startswith("whsec_")
    assert client.get("/v1/webhook").json() == {
        "object": "webhook",
        "url": "https://example.com/tenant",
        "secret": None,
    }
    replaced = client.put("/v1/webhook", json={"url": "https://example.com/t2", "secret": SECRET})
    assert replaced.json() == {"object": "webhook", "url": "https://example.com/t2", "secret": None}
    job_id = client.post("/v1/jobs", json=body(files)).json()["id"]
    (delivery,) = client.get(f"/v1/jobs/{job_id}/webhook_deliveries").json()["data"]
    assert delivery["url"] == "https://example.com/t2" and delivery["status"] == "pending"
    assert client.delete("/v1/webhook").json() == {"id": "webhook", "object": "webhook", "deleted": True}
    assert client.get("/v1/webhook").status_code == 404
    quiet = client.post("/v1/jobs", json=body(files)).json()["id"]
    assert client.get(f"/v1/jobs/{quiet}/webhook_deliveries").json()["data"] == []
    assert SECRET not in _everything_stored(ctx) and created["secret"] not in _everything_stored(ctx)


def test_tenant_webhooks_and_deliveries_are_per_tenant(
    client: TestClient, client_b: TestClient, files: dict[str, Any]
) -> None:
    client.put("/v1/webhook", json={"url": "https://a.example.com/hook"})
    assert client_b.get("/v1/webhook").status_code == 404
    job_id = client.post("/v1/jobs", json=body(files)).json()["id"]
    assert _error(client_b.get(f"/v1/jobs/{job_id}/webhook_deliveries"), 404)["code"] == "job_not_found"
    assert len(client.get(f"/v1/jobs/{job_id}/webhook_deliveries").json()["data"]) == 1
    client_b.put("/v1/webhook", json={"url": "https://b.example.com/hook"})
    assert client.get("/v1/webhook").json()["url"] == "https://a.example.com/hook"


def test_deliveries_page_and_show_the_outcome(client: TestClient, files: dict[str, Any], ctx: ServiceContext) -> None:
    with running_receiver(lambda _call: 500) as receiver:
        resp = client.post("/v1/jobs", json=body(files) | {"webhook": {"url": receiver.url, "secret": SECRET}})
        job_id = resp.json()["id"]
        client.post(f"/v1/jobs/{job_id}/cancel")
        with httpx.Client(timeout=5) as http:
            webhooks.deliver_due(ctx.sessions, ctx.settings, http)
    first = client.get(f"/v1/jobs/{job_id}/webhook_deliveries", params={"limit": 1}).json()
    assert first["has_more"] is True and len(first["data"]) == 1
    row = first["data"][0]
    assert row["id"].startswith("whd-") and row["job_id"] == job_id and row["event"] == "job.validating_files"
    assert (row["status"], row["attempts"], row["last_status_code"], row["last_error"]) == (
        "pending",
        1,
        500,
        "HTTP 500",
    )
    assert row["next_attempt_at"].endswith("Z") and row["delivered_at"] is None
    rest = client.get(f"/v1/jobs/{job_id}/webhook_deliveries", params={"after": row["id"]}).json()
    assert [r["event"] for r in rest["data"]] == ["job.cancelled"] and rest["has_more"] is False
    assert rest["data"][0]["attempts"] == 0  # waits behind the failing first one
    error = _error(client.get(f"/v1/jobs/{job_id}/webhook_deliveries", params={"after": "nope"}), 422)
    assert error["param"] == "after"
    assert _error(client.get(f"/v1/jobs/{job_id}/webhook_deliveries", params={"limit": 101}), 422)["param"] == "limit"
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == jobs.CANCELLED
