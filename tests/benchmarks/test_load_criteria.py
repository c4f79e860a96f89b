"""T15 load test: Locust CSV parsing, the verdict of each criterion and the results page (fixture CSVs, no servers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import load_test
from benchmarks.load import criteria

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def _line(method: str, name: str, n: int, fails: int, p50: int, p95: int, p99: int, rps: float) -> str:
    return (
        f"{method},{name},{n},{fails},{p50},{p50 + 1.5},1,{p99 + 10},250.0,{rps},0.0,"
        f"{p50},{p50},{p50},{p50},{p95},{p95},{p99},{p99},{p99 + 5},{p99 + 10},{p99 + 10}"
    )


def _csv(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "locust_stats.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def _good() -> list[str]:
    rows = {
        ("GET", "/healthz (probe)"): (4, 9, 12, 300.0),
        ("GET", "/v1/jobs"): (9, 40, 60, 2.0),
        ("POST", "/v1/jobs"): (12, 80, 120, 0.7),
        ("GET", "/v1/jobs/[id]"): (7, 30, 50, 11.0),
        ("GET", "/v1/jobs/[id] (probe)"): (6, 15, 20, 200.0),
    }
    lines = [_line(m, n, 1000, 0, *v) for (m, n), v in rows.items()]
    lines.append(_line("", "Aggregated", 5000, 3, 6, 30, 80, 513.7))
    return lines


def test_parse_stats_reads_every_row_and_na(tmp_path: Path) -> None:
    path = _csv(tmp_path, *_good(), "GET,/unused,0,0,0,0,0,0,0,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A")
    rows = criteria.parse_stats(path)
    assert [r.key for r in rows][:2] == ["GET /healthz (probe)", "GET /v1/jobs"]
    status = next(r for r in rows if r.key == "GET /v1/jobs/[id]")
    assert (status.requests, status.failures, status.p50_ms, status.p95_ms, status.p99_ms) == (1000, 0, 7, 30, 50)
    assert status.rps == 11.0 and status.max_ms == 60
    total = next(r for r in rows if r.name == "Aggregated")
    assert total.key == "Aggregated" and total.failures == 3
    unused = rows[-1]
    assert unused.requests == 0 and unused.p95_ms is None


def test_all_criteria_pass_on_a_good_run(tmp_path: Path) -> None:
    results = criteria.verdicts(criteria.parse_stats(_csv(tmp_path, *_good())), drain_s=12.0)
    assert criteria.passed(results), [v for v in results if not v.passed]
    by_name = {v.criterion: v for v in results}
    assert by_name["failure ratio < 1%"].value == pytest.approx(3 / 5000)
    ratio = next(v for v in results if v.criterion.startswith("job-status req/s"))
    assert ratio.value == pytest.approx(200 / 300) and "200.0 vs 300.0" in ratio.detail
    assert len(results) == 8


@pytest.mark.parametrize(
    ("lines_over", "drain_s", "failing"),
    [
        ({"/v1/jobs/[id]": (7, 250, 400, 11.0)}, 5.0, "p95 GET /v1/jobs/[id] < 200 ms"),
        ({"/v1/jobs/[id] (probe)": (6, 15, 20, 140.0)}, 5.0, "job-status req/s ≥ 0.5 × bare endpoint req/s"),
        ({}, None, "queue drained ≤ 120 s after Locust stopped"),
        ({}, 121.0, "queue drained ≤ 120 s after Locust stopped"),
    ],
)
def test_one_threshold_exceeded_fails_that_criterion_only(
    tmp_path: Path, lines_over: dict[str, tuple[int, int, int, float]], drain_s: float | None, failing: str
) -> None:
    rows = criteria.parse_stats(_csv(tmp_path, *_good()))
    for name, (p50, p95, p99, rps) in lines_over.items():
        rows = [
            criteria.Row(r.method, r.name, r.requests, r.failures, r.avg_ms, p50, p95, p99, r.max_ms, rps)
            if (r.method, r.name) == ("GET", name)
            else r
            for r in rows
        ]
    results = criteria.verdicts(rows, drain_s)
    assert [v.criterion for v in results if not v.passed] == [failing]


def test_failures_post_latency_and_missing_rows_fail(tmp_path: Path) -> None:
    lines = [ln for ln in _good() if not ln.startswith("GET,/healthz")]
    lines = [ln.replace("Aggregated,5000,3", "Aggregated,5000,60") for ln in lines]
    lines = [_line("POST", "/v1/jobs", 1000, 0, 12, 600, 900, 0.7) if ln.startswith("POST") else ln for ln in lines]
    results = criteria.verdicts(criteria.parse_stats(_csv(tmp_path, *lines)), drain_s=1.0)
    failed = {v.criterion: v for v in results if not v.passed}
    assert set(failed) == {
        "failure ratio < 1%",
        "p95 GET /healthz (probe) < 200 ms",
        "p95 POST /v1/jobs < 500 ms",
        "job-status req/s ≥ 0.5 × bare endpoint req/s",
    }
    assert failed["failure ratio < 1%"].value == pytest.approx(0.012)
    assert failed["p95 GET /healthz (probe) < 200 ms"].detail == "no requests recorded"
    assert criteria.verdicts([], check_drain=False)[0].detail == "no requests"


def _result(rows: list[criteria.Row]) -> dict[str, Any]:
    """A finished run's result as load_test stores it: 35 jobs, all succeeded, queue drained in 3.2 s."""
    return {
        "users": 20, "spawn_rate": 5, "run_time": "5m", "new_job_every_s": 10.0, "locust_exit_code": 0,
        "loadavg_before": [0.5, 0.4, 0.3], "loadavg_after": [2.1, 1.0, 0.5], "rows": rows, "drain_s": 3.2,
        "locust_cpu_warning": False,
        "jobs": {"pre_created": 5, "created_during_run": 30, "final": {"succeeded": 35},
                 "job_ids_with_more_than_one_result_row": 0},
    }  # fmt: skip


def test_results_page_lists_endpoints_and_verdicts(tmp_path: Path) -> None:
    rows = criteria.parse_stats(_csv(tmp_path, *_good()))
    result = _result(rows)
    header = {"command": "python -m benchmarks.load_test", "commit": "abc", "machine": "m", "date": "d"}
    md = load_test.markdown(header, result, criteria.verdicts(rows, 3.2), note="quiet box")
    assert "**Overall: PASS**" in md and "**Note:** quiet box" in md
    assert "| GET /v1/jobs/[id] | 1000 | 0 | 11.0 | 7 | 30 | 50 | 60 |" in md
    assert "| p95 POST /v1/jobs < 500 ms | 80 | 500 | PASS |" in md
    assert "Queue drained 3.2 s after Locust stopped." in md


def test_a_stalled_bare_endpoint_makes_the_comparison_fail(tmp_path: Path) -> None:
    """Both probes at ~44 ms (uvicorn --workers without TCP_NODELAY): a ratio near 1 must not count as a pass."""
    rows = criteria.parse_stats(_csv(tmp_path, *_good()))
    rows = [
        criteria.Row(r.method, r.name, r.requests, r.failures, r.avg_ms, 44, 48, 52, r.max_ms, 22.0)
        if "(probe)" in r.name
        else r
        for r in rows
    ]
    ratio = next(v for v in criteria.verdicts(rows, 1.0) if v.criterion.startswith("job-status req/s"))
    assert ratio.value == pytest.approx(1.0) and not ratio.passed
    assert "not comparable" in ratio.detail and "44 ms" in ratio.detail


def test_rerender_recomputes_verdicts_of_a_stored_run(tmp_path: Path) -> None:
    rows = criteria.parse_stats(_csv(tmp_path, *_good()))
    result = _result(rows)
    header = {"command": "c", "commit": "abc", "machine": "m", "date": "d", "torch": "t"}
    assert load_test._write(header, result, "first", tmp_path / "run") == 0
    stored = json.loads((tmp_path / "run.json").read_text())
    stored["endpoints"][0]["p95_ms"] = 999.0  # the bare probe, as if measured slower
    (tmp_path / "run.json").write_text(json.dumps(stored))
    assert load_test._rerender(tmp_path / "run.json") == 1
    again = json.loads((tmp_path / "run.json").read_text())
    assert again["passed"] is False and again["command"] == "c" and again["note"].startswith("first. Verdicts")
    assert "| p95 GET /healthz (probe) < 200 ms | 999 | 200 | FAIL |" in (tmp_path / "run.md").read_text()
