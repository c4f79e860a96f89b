"""T15 Locust users against a running dwf API (started by ``python -m benchmarks.load_test``).

The T15 mix (reliability-tests.md §6): ``ApiUser`` does 80 % ``GET /v1/jobs/{id}`` (one of the pre-created jobs),
15 % ``GET /v1/jobs`` and 5 % ``POST /v1/jobs`` of a tiny job, waiting 0.5-1.5 s between requests. Every POST carries
an ``Idempotency-Key``; the key changes only once every ``DWF_LOAD_NEW_JOB_EVERY_S`` seconds (shared by all users),
so at most one new job per period reaches the single worker and the rest are idempotent replays of the POST path.

Throughput comparison (issue 5: job status at least half the throughput of a bare FastAPI endpoint, same run): two
probe users (one each, no wait) loop on ``GET /v1/jobs/{id}`` and on ``GET /healthz`` (same app and middleware, no
database work) during the whole run; each probe's req/s is its closed-loop throughput under the same load.

The ``quitting`` hook sets the exit code: 1 when a criterion of benchmarks/load/criteria.py fails.

Configuration (environment): DWF_LOAD_API_KEY, DWF_LOAD_JOB_IDS (comma-separated), DWF_LOAD_MODEL_ID,
DWF_LOAD_DATA_ID, DWF_LOAD_RUN (idempotency-key prefix), DWF_LOAD_NEW_JOB_EVERY_S (default 10).
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from typing import Any

from locust import FastHttpUser, between, constant, events, task
from locust.env import Environment
from locust.stats import StatsEntry

from benchmarks.load import criteria

API_KEY = os.environ.get("DWF_LOAD_API_KEY", "")
JOB_IDS = [j for j in os.environ.get("DWF_LOAD_JOB_IDS", "").split(",") if j]
MODEL_ID = os.environ.get("DWF_LOAD_MODEL_ID", "")
DATA_ID = os.environ.get("DWF_LOAD_DATA_ID", "")
RUN = os.environ.get("DWF_LOAD_RUN") or uuid.uuid4().hex[:8]
NEW_JOB_EVERY_S = float(os.environ.get("DWF_LOAD_NEW_JOB_EVERY_S", "10"))
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _job_id() -> str:
    return random.choice(JOB_IDS)


class ApiUser(FastHttpUser):
    """The T15 request mix of one API client."""

    wait_time = between(0.5, 1.5)

    @task(80)
    def job_status(self) -> None:
        self.client.get(f"/v1/jobs/{_job_id()}", headers=AUTH, name=criteria.STATUS)

    @task(15)
    def job_list(self) -> None:
        self.client.get("/v1/jobs?limit=20", headers=AUTH, name=criteria.LIST)

    @task(5)
    def job_submit(self) -> None:
        slot = int(time.time() // NEW_JOB_EVERY_S)
        body = {
            "model": {"file_id": MODEL_ID},
            "dataset": {"file_id": DATA_ID},
            "method": {"epochs": 1, "batch_size": 64},
            "seed": slot % 1_000_000,  # the same body for the same key (another body would be a 409)
        }
        headers = {**AUTH, "Idempotency-Key": f"load-{RUN}-{slot}"}
        self.client.post("/v1/jobs", json=body, headers=headers, name=criteria.CREATE)


class StatusProbe(FastHttpUser):
    """Closed loop on the job-status endpoint: its req/s is the job-status throughput of this run."""

    fixed_count = 1
    wait_time = constant(0)

    @task
    def job_status(self) -> None:
        self.client.get(f"/v1/jobs/{_job_id()}", headers=AUTH, name=criteria.PROBE_STATUS)


class BareProbe(FastHttpUser):
    """Closed loop on ``/healthz`` (no auth, no database): the bare FastAPI endpoint of the comparison."""

    fixed_count = 1
    wait_time = constant(0)

    @task
    def healthz(self) -> None:
        self.client.get("/healthz", name=criteria.PROBE_BARE)


def _row(entry: StatsEntry) -> criteria.Row:
    def pct(p: float) -> float | None:
        return float(entry.get_response_time_percentile(p)) if entry.num_requests else None

    return criteria.Row(
        method=entry.method or "",
        name=entry.name,
        requests=entry.num_requests,
        failures=entry.num_failures,
        avg_ms=float(entry.avg_response_time),
        p50_ms=pct(0.5),
        p95_ms=pct(0.95),
        p99_ms=pct(0.99),
        max_ms=float(entry.max_response_time or 0),
        rps=float(entry.total_rps),
    )


def _set_exit_code(environment: Environment, **_kwargs: Any) -> None:
    """Exit code 1 when a T15 criterion fails (the queue-drain criterion is checked by load_test.py)."""
    rows = [_row(e) for e in environment.stats.entries.values()] + [_row(environment.stats.total)]
    results = criteria.verdicts(rows, check_drain=False)
    for v in results:
        logging.info("T15 %s: %s (%s) %s", "PASS" if v.passed else "FAIL", v.criterion, v.value, v.detail)
    environment.process_exit_code = 0 if criteria.passed(results) else 1


events.quitting.add_listener(_set_exit_code)  # type: ignore[no-untyped-call]
