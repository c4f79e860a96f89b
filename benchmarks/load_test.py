"""T15 load test: Locust against the Redis + PostgreSQL stack (2 uvicorn workers, 1 Celery worker, local blobs).

    python -m benchmarks.load_test [--users 20 --spawn-rate 5 --run-time 5m] [--note TEXT]

Starts a fresh PostgreSQL 15 cluster, redis-server, ``uvicorn api.main:app --workers 2`` and one Celery worker
(prefork, concurrency 1) through the fault tier's harness (tests/fault/harness.py: every process in its own group,
stopped at the end), creates a tenant ``load`` with a new API key, uploads a tiny model and dataset, runs a few jobs,
then runs ``locust --headless`` with benchmarks/load/locustfile.py on the same box. After Locust stops it waits for
the queue to drain, parses Locust's CSV stats and writes benchmarks/results/load-t15.{json,md} with the verdict of
each criterion (benchmarks/load/criteria.py). Exit code 0 only when every criterion passes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.load import criteria
from benchmarks.stamp import stamp, stamp_line

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"
LOCUSTFILE = ROOT / "load" / "locustfile.py"
TERMINAL = ("succeeded", "failed", "cancelled")
PRE_CREATED_JOBS = 5
TENANT = "load"
RERENDERED = "Verdicts recomputed after the run with the current criteria (`--rerender`); the numbers are unchanged."


def _tiny_inputs(work: Path) -> dict[str, Path]:
    """300/100 MNIST images (.safetensors) and a 784-16-10 ONNX MLP, as in the fault tier."""
    from tests.fault.conftest import _safetensors_dataset
    from tests.service_helpers import mlp_onnx, mnist_npz

    return {
        "data": _safetensors_dataset(mnist_npz(work / "mnist.npz", 300, 100)),
        "model": mlp_onnx(work / "mlp16.onnx", hidden=(16,)),
    }


def _statuses(h: Any) -> collections.Counter[str]:
    return collections.Counter(str(j["status"]) for j in h.jobs())


def _wait_drained(h: Any, timeout: float) -> float | None:
    """Seconds until every job is terminal, or None after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if all(s in TERMINAL for s in _statuses(h)):
            return time.monotonic() - t0
        time.sleep(0.5)
    return None


def run(
    users: int, spawn_rate: float, run_time: str, new_job_every_s: float, work: Path, api_workers: int = 2
) -> dict[str, Any]:
    """Start the stack, run Locust, tear everything down; the measured numbers."""
    import httpx
    from sqlalchemy.orm import Session

    from dwf_service.auth import add_key, generate_key
    from tests.fault.harness import Harness
    from tests.integration.conftest import PG_BIN, _free_port, _postgres_user_kwargs, _sweep_stale_pg_dirs

    inputs = _tiny_inputs(work)
    _sweep_stale_pg_dirs()
    pg_base = Path(tempfile.mkdtemp(prefix="dwf-pg-"))
    h: Harness | None = None
    try:
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(pg_base / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"],
            check=True, capture_output=True, **_postgres_user_kwargs(pg_base),
        )  # fmt: skip
        h = Harness(root=work, pg_base=pg_base, pg_port=_free_port())
        # Submitted jobs stay queued behind the single worker for a while: no quota, lease-based recovery as deployed.
        h.env.update(DWF_QUOTA_MAX_ACTIVE_JOBS="0", DWF_REQUEUE_AFTER_SECONDS="120")
        h.start_postgres()
        h.create_database()
        h.start_redis()
        h.migrate()
        # T15: 2 uvicorn workers and 1 Celery worker, started as docker/entrypoint-api.sh starts the API image. With
        # --workers uvicorn binds the socket itself (proto 0), so asyncio never sets TCP_NODELAY on the connections;
        # api.http_protocol's protocol sets it (without it every keep-alive request after the first stalls ~40 ms).
        h.api_port = _free_port()
        argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(h.api_port)]
        argv += ["--http", "api.http_protocol:NoDelayH11Protocol"]
        if api_workers > 1:
            argv += ["--workers", str(api_workers)]
        h.api = h.spawn("api", argv, env=h.service_env())
        h._wait(lambda: _ready(h.url), 120, "the API", h.api)
        h.start_worker_env({})

        key = generate_key()
        with Session(h.engine) as session:
            add_key(session, key, name="load-t15", tenant=TENANT)
            session.commit()
        client = httpx.Client(base_url=h.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        model_id = h.upload(client, inputs["model"], "model")
        data_id = h.upload(client, inputs["data"], "dataset")
        body = {"model": {"file_id": model_id}, "dataset": {"file_id": data_id}, "method": {"epochs": 1}}
        job_ids = []
        for seed in range(PRE_CREATED_JOBS):
            resp = client.post("/v1/jobs", json={**body, "seed": seed})
            resp.raise_for_status()
            job_ids.append(str(resp.json()["id"]))
        h.wait_terminal(job_ids, 300)
        pre_states = _statuses(h)

        prefix = work / "locust"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DWF_LOAD_API_KEY": key,
            "DWF_LOAD_JOB_IDS": ",".join(job_ids),
            "DWF_LOAD_MODEL_ID": model_id,
            "DWF_LOAD_DATA_ID": data_id,
            "DWF_LOAD_RUN": os.urandom(4).hex(),
            "DWF_LOAD_NEW_JOB_EVERY_S": str(new_job_every_s),
        }
        locust = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users)]
        locust += ["-r", str(spawn_rate), "-t", run_time, "--host", h.url, "--csv", str(prefix), "--only-summary"]
        load_before = os.getloadavg()
        t0 = time.monotonic()
        with (work / "locust.log").open("wb") as log:
            done = subprocess.run(locust, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        locust_s = time.monotonic() - t0
        load_after = os.getloadavg()
        drain_s = _wait_drained(h, 300)
        states = _statuses(h)
        jobs = h.jobs()
        duplicate_results = sum(1 for j in jobs if j["results"] > 1)
        locust_log = (work / "locust.log").read_text(errors="replace")
        rows = criteria.parse_stats(Path(f"{prefix}_stats.csv"))
        return {
            "users": users,
            "api_workers": api_workers,
            "spawn_rate": spawn_rate,
            "run_time": run_time,
            "new_job_every_s": new_job_every_s,
            "locust_exit_code": done.returncode,
            "locust_wall_s": round(locust_s, 1),
            "locust_cpu_warning": "CPU usage above" in locust_log or "CPU usage was too high" in locust_log,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "rows": rows,
            "drain_s": None if drain_s is None else round(drain_s, 1),
            "jobs": {
                "pre_created": PRE_CREATED_JOBS,
                "before_locust": dict(pre_states),
                "total": len(jobs),
                "created_during_run": len(jobs) - PRE_CREATED_JOBS,
                "final": dict(states),
                "job_ids_with_more_than_one_result_row": duplicate_results,
            },
            "locust_log_tail": locust_log[-4000:],
        }
    except BaseException:
        if h is not None:
            print(h.logs()[-6000:], file=sys.stderr)
        raise
    finally:
        if h is not None:
            h.close()
        shutil.rmtree(pg_base, ignore_errors=True)


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(header: dict[str, Any], result: dict[str, Any], verdicts: list[criteria.Verdict], note: str) -> str:
    """The results page: stamp, per-endpoint table, criteria, job counts."""
    rows: list[criteria.Row] = result["rows"]
    lines = [
        "# T15 load test (Locust, Redis + PostgreSQL stack)",
        "",
        stamp_line(header),
        "",
        f"Locust `--headless -u {result['users']} -r {result['spawn_rate']} -t {result['run_time']}` on the same box "
        f"as `uvicorn api.main:app` with {result.get('api_workers', 2)} worker process(es), one Celery worker "
        "(prefork, concurrency 1), redis-server and "
        "PostgreSQL 15 (fresh cluster, `fsync=off`), local blob store. Mix: 80 % `GET /v1/jobs/{id}`, 15 % "
        f"`GET /v1/jobs`, 5 % `POST /v1/jobs` (Idempotency-Key; a new tiny job at most every "
        f"{result['new_job_every_s']:g} s, otherwise an idempotent replay), 0.5–1.5 s between requests. "
        "Two probe users (one each, no wait) loop on `GET /v1/jobs/{id}` and on `GET /healthz` (no auth, no "
        "database) for the throughput comparison.",
        "",
        f"**Overall: {'PASS' if criteria.passed(verdicts) else 'FAIL'}** · Locust exit code "
        f"{result['locust_exit_code']} (set at run time by the `quitting` hook) · load average before/after "
        f"{result['loadavg_before'][0]:.2f}/{result['loadavg_after'][0]:.2f} (1 min)",
        "",
    ]
    if note:
        lines += [f"**Note:** {note}", ""]
    lines += [
        "| endpoint | requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.key} | {r.requests} | {r.failures} | {r.rps:.1f} | {_fmt(r.p50_ms)} | {_fmt(r.p95_ms)} | "
            f"{_fmt(r.p99_ms)} | {r.max_ms:.0f} |"
        )
    lines += ["", "| criterion | measured | limit | verdict |", "|---|---:|---:|---|"]
    for v in verdicts:
        measured = _fmt(v.value, ".3g") + (f" ({v.detail})" if v.detail else "")
        lines.append(f"| {v.criterion} | {measured} | {v.limit:g} | {'PASS' if v.passed else 'FAIL'} |")
    jobs = result["jobs"]
    lines += [
        "",
        f"Jobs: {jobs['pre_created']} pre-created, {jobs['created_during_run']} created during the run; final "
        f"states {jobs['final']}; jobs with more than one result row: {jobs['job_ids_with_more_than_one_result_row']}. "
        f"Queue drained {_fmt(result['drain_s'], '.1f')} s after Locust stopped.",
        "",
        "Indicative only: the load generator, the API, the worker and both servers share one 2-core box.",
    ]
    if result["locust_cpu_warning"]:
        lines.append("Locust warned that its own CPU usage was high: the client may have limited the request rate.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=5)
    parser.add_argument("--run-time", default="5m")
    parser.add_argument("--new-job-every", type=float, default=10.0, help="seconds between new jobs (default 10)")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes (T15: 2)")
    parser.add_argument("--note", default="", help="a line for the results page (e.g. what else ran)")
    parser.add_argument("--out", default="load-t15", help="results file stem under benchmarks/results")
    parser.add_argument(
        "--rerender", type=Path, help="no run: recompute the verdicts of a results .json and rewrite its .json/.md"
    )
    args = parser.parse_args(argv)
    if args.rerender is not None:
        return _rerender(args.rerender)
    header = stamp("benchmarks.load_test", argv=argv)
    with tempfile.TemporaryDirectory(prefix="dwf-load-") as tmp:
        result = run(args.users, args.spawn_rate, args.run_time, args.new_job_every, Path(tmp), args.api_workers)
    return _write(header, result, args.note, RESULTS / args.out)


def _rerender(path: Path) -> int:
    """Recompute the verdicts of a stored run with the current criteria (the measured numbers are unchanged)."""
    payload = json.loads(path.read_text())
    header = {k: payload[k] for k in ("command", "commit", "machine", "date", "torch")}
    fields = criteria.Row.__dataclass_fields__
    rows = [criteria.Row(**{k: v for k, v in e.items() if k in fields}) for e in payload["endpoints"]]
    skip = {*header, "note", "endpoints", "criteria", "passed"}
    result = {**{k: v for k, v in payload.items() if k not in skip}, "rows": rows}
    note = str(payload.get("note", ""))
    if RERENDERED not in note:
        note = f"{note.rstrip('.')}. {RERENDERED}" if note else RERENDERED
    return _write(header, result, note, path.with_suffix(""))


def _write(header: dict[str, Any], result: dict[str, Any], note: str, stem: Path) -> int:
    """Write ``stem``.json and ``stem``.md; 0 when every criterion passed."""
    verdicts = criteria.verdicts(result["rows"], result["drain_s"])
    payload = {
        **header,
        "note": note,
        **{k: v for k, v in result.items() if k != "rows"},
        "endpoints": [r.as_dict() for r in result["rows"]],
        "criteria": [v.__dict__ for v in verdicts],
        "passed": criteria.passed(verdicts),
    }
    stem.parent.mkdir(exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    md = markdown(header, result, verdicts, note)
    stem.with_suffix(".md").write_text(md)
    print(md)
    return 0 if payload["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
