"""T15 pass criteria (reliability-tests.md §6) and the parsing of Locust's ``--csv`` stats file.

Pure Python (no locust, no gevent): used by the locustfile's ``quitting`` hook, by ``benchmarks/load_test.py`` and
by the tests. Endpoints are keyed ``"<method> <name>"`` as Locust reports them (``"GET /v1/jobs/[id]"``).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FAIL_RATIO_MAX = 0.01
P95_GET_MS_MAX = 200.0
P95_POST_MS_MAX = 500.0
STATUS_VS_BARE_MIN = 0.5
DRAIN_S_MAX = 120.0
# A bare endpoint answering in this many ms or more is not bare: the connection limits it, not the app (e.g. the
# ~40 ms Nagle/delayed-ACK stall of `uvicorn --workers N`, which leaves TCP_NODELAY off: Kludex/uvicorn#3149).
BARE_P50_MS_MAX = 20.0

# Request names the locustfile uses (Locust's "Name" column; the method is its own column).
STATUS = "/v1/jobs/[id]"
LIST = "/v1/jobs"
CREATE = "/v1/jobs"
PROBE_STATUS = "/v1/jobs/[id] (probe)"
PROBE_BARE = "/healthz (probe)"
AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class Row:
    """One endpoint's numbers (or the aggregate): counts, response times in ms, requests per second."""

    method: str
    name: str
    requests: int
    failures: int
    avg_ms: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float
    rps: float

    @property
    def key(self) -> str:
        return f"{self.method} {self.name}".strip()

    def as_dict(self) -> dict[str, Any]:
        return {"endpoint": self.key, **asdict(self)}


@dataclass(frozen=True)
class Verdict:
    """One criterion: the measured value against its limit."""

    criterion: str
    value: float | None
    limit: float
    passed: bool
    detail: str = ""


def _num(text: str) -> float | None:
    text = text.strip()
    return None if text in ("", "N/A") else float(text)


def parse_stats(path: Path) -> list[Row]:
    """The rows of Locust's ``<prefix>_stats.csv`` (one per endpoint, then ``Aggregated``)."""
    rows: list[Row] = []
    with path.open(newline="") as fh:
        for rec in csv.DictReader(fh):
            rows.append(
                Row(
                    method=rec["Type"].strip(),
                    name=rec["Name"].strip(),
                    requests=int(rec["Request Count"]),
                    failures=int(rec["Failure Count"]),
                    avg_ms=_num(rec["Average Response Time"]) or 0.0,
                    p50_ms=_num(rec["50%"]),
                    p95_ms=_num(rec["95%"]),
                    p99_ms=_num(rec["99%"]),
                    max_ms=_num(rec["Max Response Time"]) or 0.0,
                    rps=_num(rec["Requests/s"]) or 0.0,
                )
            )
    return rows


def _find(rows: list[Row], method: str, name: str) -> Row | None:
    return next((r for r in rows if r.method == method and r.name == name), None)


def _total(rows: list[Row]) -> Row | None:
    return next((r for r in rows if r.name == AGGREGATED), None)


def _p95(row: Row | None, limit: float, label: str) -> Verdict:
    if row is None or row.requests == 0 or row.p95_ms is None:
        return Verdict(f"p95 {label} < {limit:g} ms", None, limit, False, "no requests recorded")
    return Verdict(f"p95 {label} < {limit:g} ms", row.p95_ms, limit, row.p95_ms < limit)


def verdicts(rows: list[Row], drain_s: float | None = None, *, check_drain: bool = True) -> list[Verdict]:
    """Every T15 criterion for the stats ``rows``; ``drain_s``: seconds the queue took to drain after Locust stopped."""
    out: list[Verdict] = []
    total = _total(rows)
    label = f"failure ratio < {FAIL_RATIO_MAX:.0%}"
    if total is None or total.requests == 0:
        out.append(Verdict(label, None, FAIL_RATIO_MAX, False, "no requests"))
    else:
        ratio = total.failures / total.requests
        detail = f"{total.failures} of {total.requests}"
        out.append(Verdict(label, ratio, FAIL_RATIO_MAX, ratio < FAIL_RATIO_MAX, detail))
    for name in (STATUS, LIST, PROBE_STATUS, PROBE_BARE):
        out.append(_p95(_find(rows, "GET", name), P95_GET_MS_MAX, f"GET {name}"))
    out.append(_p95(_find(rows, "POST", CREATE), P95_POST_MS_MAX, f"POST {CREATE}"))
    status, bare = _find(rows, "GET", PROBE_STATUS), _find(rows, "GET", PROBE_BARE)
    label = f"job-status req/s ≥ {STATUS_VS_BARE_MIN:g} × bare endpoint req/s"
    if status is None or bare is None or bare.rps <= 0:
        out.append(Verdict(label, None, STATUS_VS_BARE_MIN, False, "probe rows missing"))
    else:
        ratio = status.rps / bare.rps
        detail = f"{status.rps:.1f} vs {bare.rps:.1f} req/s"
        ok = ratio >= STATUS_VS_BARE_MIN
        if bare.p50_ms is not None and bare.p50_ms >= BARE_P50_MS_MAX:
            ok = False
            detail += (
                f"; not comparable: the bare endpoint's p50 is {bare.p50_ms:g} ms (≥ {BARE_P50_MS_MAX:g} ms), so the "
                "connection limited both probes (uvicorn --workers: no TCP_NODELAY, Kludex/uvicorn#3149)"
            )
        out.append(Verdict(label, ratio, STATUS_VS_BARE_MIN, ok, detail))
    if check_drain:
        label = f"queue drained ≤ {DRAIN_S_MAX:g} s after Locust stopped"
        if drain_s is None:
            out.append(Verdict(label, None, DRAIN_S_MAX, False, "jobs still pending at the deadline"))
        else:
            out.append(Verdict(label, drain_s, DRAIN_S_MAX, drain_s <= DRAIN_S_MAX))
    return out


def passed(results: list[Verdict]) -> bool:
    return all(v.passed for v in results)
