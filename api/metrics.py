"""Prometheus ``/metrics``: job counts, queue depth and job durations read from the database at scrape time, and
an HTTP latency histogram per route template (ASGI middleware).

Each app has its own registry (tests build many apps in one process). The endpoint is unauthenticated, like
``/healthz``: scrape it from the private network and do not publish it (it shows counts only, no ids or names).

    dwf_jobs{status="queued"} 2.0                       # every status, 0 when none
    dwf_queue_depth 2.0                                 # jobs waiting for a worker (status queued)
    dwf_job_duration_seconds_bucket{status="succeeded",le="60.0"} 3.0   # started → finished, finished jobs
    dwf_http_request_duration_seconds_bucket{method="GET",route="/v1/jobs/{job_id}",status="200",le="0.05"} 7.0
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dwf_service import jobs
from dwf_service.context import ServiceContext
from dwf_service.models import Job

log = logging.getLogger(__name__)

STATUSES = (jobs.VALIDATING, jobs.QUEUED, jobs.RUNNING, jobs.SUCCEEDED, jobs.FAILED, jobs.CANCELLED)
# Job durations span seconds (a failed validation) to days (an ImageNet run).
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Finished jobs whose durations go into the histogram (newest first): bounds the scrape on a long-lived database.
MAX_DURATION_ROWS = 10_000


class JobCollector(Collector):
    """Reads the jobs table on every scrape (so API replicas agree, and a restart loses nothing)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def describe(self) -> Iterable[Metric]:
        """No samples at registration time (that would query the database)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """dwf_database_up, and when it is 1: dwf_jobs{status}, dwf_queue_depth, dwf_job_duration_seconds{status}."""
        try:
            counts, durations = self._read()
        except Exception:  # the scrape still answers (HTTP latency, database down) rather than a 500
            log.warning("metrics: cannot read the jobs table", exc_info=True)
            yield GaugeMetricFamily("dwf_database_up", "Whether the jobs table could be read", value=0)
            return
        yield GaugeMetricFamily("dwf_database_up", "Whether the jobs table could be read", value=1)
        yield from self._families(counts, durations)

    def _read(self) -> tuple[dict[str, int], list[tuple[str, datetime | None, datetime | None]]]:
        with self.ctx.sessions() as session:
            counts: dict[str, int] = {
                str(status): int(n)
                for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            }
            durations = session.execute(
                select(Job.status, Job.started_at, Job.finished_at)
                .where(Job.started_at.is_not(None), Job.finished_at.is_not(None))
                .order_by(Job.finished_at.desc())
                .limit(MAX_DURATION_ROWS)
            ).all()
        return counts, [(str(status), started, finished) for status, started, finished in durations]

    def _families(
        self, counts: dict[str, int], durations: list[tuple[str, datetime | None, datetime | None]]
    ) -> Iterator[Metric]:
        by_status = GaugeMetricFamily("dwf_jobs", "Jobs by status", labels=["status"])
        for status in (*STATUSES, *sorted(set(counts) - set(STATUSES))):
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily("dwf_queue_depth", "Jobs queued for a worker", value=counts.get(jobs.QUEUED, 0))
        hist = HistogramMetricFamily(
            "dwf_job_duration_seconds", "Run time of finished jobs (started to finished)", labels=["status"]
        )
        seconds: dict[str, list[float]] = {}
        for status, started, finished in durations:
            if started is not None and finished is not None:  # (the query already excludes NULLs)
                seconds.setdefault(str(status), []).append(max(0.0, (finished - started).total_seconds()))
        for status in sorted(seconds):
            values = seconds[status]
            buckets = [(str(b), sum(v <= b for v in values)) for b in JOB_BUCKETS]
            buckets.append(("+Inf", len(values)))
            hist.add_metric([status], buckets, sum_value=sum(values))
        yield hist


class RouteTemplates:
    """Maps a request path to its route template (``/v1/jobs/{job_id}``), from the app's routes and OpenAPI paths.

    Matched on the full path with public information only (the OpenAPI paths carry the router prefixes), so it
    does not depend on how a FastAPI version nests included routers; built on the first request, once every
    route is registered.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def _build(self) -> list[tuple[re.Pattern[str], str]]:
        templates: set[str] = set()
        prefixes: set[str] = set()
        with contextlib.suppress(Exception):  # a schema that cannot be generated must not break the metrics
            templates.update(self.app.openapi().get("paths", {}))
        for route in self.app.routes:
            path = getattr(route, "path", None)
            if isinstance(route, Mount) and isinstance(path, str):
                prefixes.add(path)
            elif isinstance(path, str):
                templates.add(path)
        compiled = []
        for template in sorted(templates, key=lambda t: (t.count("{"), -len(t))):  # literal segments win
            parts = re.split(r"(\{[^}]+\})", template)
            regex = "".join(
                (".+" if p.endswith(":path}") else "[^/]+") if p.startswith("{") else re.escape(p) for p in parts
            )
            compiled.append((re.compile(f"^{regex}$"), template))
        compiled += [(re.compile(f"^{re.escape(p)}(/.*)?$"), p) for p in sorted(prefixes, key=len, reverse=True)]
        return compiled

    def __call__(self, path: str) -> str:
        """The template of ``path``, or ``unmatched``."""
        if self._compiled is None:
            self._compiled = self._build()
        for regex, template in self._compiled:
            if regex.match(path):
                return template
        return "unmatched"


class LatencyMiddleware:
    """Observes every HTTP request in ``dwf_http_request_duration_seconds{method,route,status}``.

    The route is the template (``/v1/jobs/{job_id}``), never the raw path, so label values stay few. A
    server-sent events stream is timed to its first byte, not to its end (it lasts as long as the job).
    """

    def __init__(self, app: ASGIApp, histogram: Histogram, templates: RouteTemplates) -> None:
        self.app, self.histogram, self.templates = app, histogram, templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "observed": False}

        def observe() -> None:
            if not state["observed"]:
                state["observed"] = True
                labels = (scope.get("method", "GET"), self.templates(scope["path"]), str(state["status"]))
                self.histogram.labels(*labels).observe(time.perf_counter() - start)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = dict(message.get("headers") or [])
                if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                    await send(message)
                    observe()
                    return
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                observe()

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            observe()


def install_metrics(app: FastAPI, ctx: ServiceContext) -> CollectorRegistry:
    """Add the latency middleware and ``GET /metrics`` to ``app``; returns the app's registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(ctx))
    latency = Histogram(
        "dwf_http_request_duration_seconds",
        "HTTP request latency by route template",
        ["method", "route", "status"],
        buckets=HTTP_BUCKETS,
        registry=registry,
    )
    app.add_middleware(LatencyMiddleware, histogram=latency, templates=RouteTemplates(app))
    app.state.metrics_registry = registry

    @app.get("/metrics", include_in_schema=False)
    def metrics(_request: Request) -> Response:
        """Prometheus text exposition format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry


__all__ = ["JobCollector", "LatencyMiddleware", "install_metrics"]
