"""GET /metrics: jobs by status and queue depth read from the database, job durations, HTTP latency by route."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from api.metrics import JobCollector
from dwf_service import jobs
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job, utcnow
from tests.api.test_jobs import body


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of /metrics as {(name, sorted labels): value}; scraped without the API key (like /healthz)."""
    resp = client.get("/metrics", headers={"Authorization": ""})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def jobs_gauge(samples: dict[Any, float], status: str) -> float:
    return samples[("dwf_jobs", (("status", status),))]


def test_metric_names_and_job_counts_follow_the_database(
    client: TestClient,
    files: dict[str, Any],
    ctx: ServiceContext,
) -> None:
    before = scrape(client)
    for status in ("validating_files", "queued", "running", "succeeded", "failed", "cancelled"):
        assert jobs_gauge(before, status) == 0
    assert before[("dwf_queue_depth", ())] == 0 and before[("dwf_database_up", ())] == 1
    assert not any(name == "dwf_job_duration_seconds_count" for name, _ in before)

    created = [client.post("/v1/jobs", json=body(files)).json()["id"] for _ in range(3)]
    after = scrape(client)
    assert jobs_gauge(after, "validating_files") == 3

    # Two jobs move on: one queued, one finished 90 s after it started.
    now = utcnow()
    with session_scope(ctx.sessions) as session:
        session.execute(update(Job).where(Job.id == created[0]).values(status=jobs.QUEUED))
        session.execute(
            update(Job)
            .where(Job.id == created[1])
            .values(status=jobs.SUCCEEDED, started_at=now - timedelta(seconds=90), finished_at=now)
        )
    later = scrape(client)
    assert (jobs_gauge(later, "validating_files"), jobs_gauge(later, "queued")) == (1, 1)
    assert jobs_gauge(later, "succeeded") == 1 and later[("dwf_queue_depth", ())] == 1
    ok = (("status", "succeeded"),)
    assert later[("dwf_job_duration_seconds_count", ok)] == 1
    assert abs(later[("dwf_job_duration_seconds_sum", ok)] - 90) < 1e-3
    assert later[("dwf_job_duration_seconds_bucket", (("le", "60.0"), *ok))] == 0
    assert later[("dwf_job_duration_seconds_bucket", (("le", "120.0"), *ok))] == 1


def test_http_latency_is_labelled_by_route_template(client: TestClient, files: dict[str, Any]) -> None:
    job_id = client.post("/v1/jobs", json=body(files)).json()["id"]
    for _ in range(2):
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert client.get("/v1/jobs/job-nope").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    samples = scrape(client)

    def count(method: str, route: str, status: str) -> float:
        labels = (("method", method), ("route", route), ("status", status))
        return samples.get(("dwf_http_request_duration_seconds_count", labels), 0.0)

    assert count("GET", "/v1/jobs/{job_id}", "200") == 2
    assert count("GET", "/v1/jobs/{job_id}", "404") == 1
    assert count("POST", "/v1/jobs", "200") == 1
    assert count("GET", "unmatched", "404") == 1
    # No raw ids in label values: the number of series does not grow with the number of jobs.
    assert not any(job_id in str(labels) for _, labels in samples)
    buckets = [k for k in samples if k[0] == "dwf_http_request_duration_seconds_bucket"]
    assert buckets and all(dict(labels)["le"] for _, labels in buckets)


def test_scrape_answers_when_the_database_is_away(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def away(_self: JobCollector) -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(JobCollector, "_read", away)
    client.get("/healthz")
    samples = scrape(client)
    assert samples[("dwf_database_up", ())] == 0
    assert not any(name == "dwf_jobs" for name, _ in samples)
    assert (
        samples[
            ("dwf_http_request_duration_seconds_count", (("method", "GET"), ("route", "/healthz"), ("status", "200")))
        ]
        == 1
    )
