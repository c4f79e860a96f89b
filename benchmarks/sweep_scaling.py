"""Wall clock of one sweep on 1 worker and on 2: does a sweep fan out over the worker pool?

    OMP_NUM_THREADS=1 python -m benchmarks.sweep_scaling [--children 4] [--epochs 5] [--train 60000] [--test 1000]

For each worker count, starts ``dwf serve --workers N`` (the embedded stack: SQLite, SQL broker, N Celery worker
processes, each one job at a time and one torch thread) on a fresh data dir, uploads an MNIST subset, creates a
sweep of LeNet-300-100 (zoo) with ``--children`` target sparsities, and times POST /v1/sweeps → the sweep finished
(every child succeeded and frontier.json stored). Writes benchmarks/results/sweep-scaling.{json,md}. The speed-up is
bounded by the cores: run it on a machine with at least as many idle cores as workers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.stamp import MNIST_DIR, command, commit, machine
from dwf_client import Client
from dwf_client.datasets import idx_to_npz
from tests.service_helpers import wait_until_ready

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "sweep-scaling"
TARGET_SPEEDUP = 1.8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def targets(children: int) -> list[float]:
    """``children`` distinct target sparsities from 0.5 up to 0.98."""
    if children == 1:
        return [0.9]
    return [round(0.5 + (0.98 - 0.5) * i / (children - 1), 4) for i in range(children)]


def run_sweep(workers: int, npz: Path, children: int, epochs: int, work: Path) -> dict[str, Any]:
    """One ``dwf serve --workers`` and one sweep on it; the seconds from the POST to the finished sweep."""
    port, key = _free_port(), "dwf_benchmark_key_sweep_0123456789"
    env = {**os.environ, "DWF_API_KEY": key, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["DWF_RECONCILE_SECONDS"] = "2"
    log = work / f"serve-{workers}.log"
    cmd = [
        str(REPO / ".venv" / "bin" / "dwf"),
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(work / f"data-{workers}"),
    ]
    proc = subprocess.Popen([*cmd, "--workers", str(workers)], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, proc, log)
        with Client(base, key, timeout=60) as client:
            dataset = client.upload_file(npz, "dataset").id
            time.sleep(5)  # the workers import torch after the API is ready; let them settle before the clock runs
            started = time.monotonic()
            sweep = client.create_sweep(
                {
                    "model": {"name": "lenet_300_100"},
                    "dataset": {"file_id": dataset},
                    "method": {"epochs": epochs},
                    "grid": {"target_sparsity": targets(children)},
                }
            )
            final = client.wait_for_sweep(sweep.id, poll=0.25, timeout=3600)
            elapsed = time.monotonic() - started
            if final.status != "succeeded":
                raise RuntimeError(f"sweep ended {final.status}: {final.counts}")
            jobs = [client.get_job(c.job_id) for c in final.children]
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    return {
        "workers": workers,
        "seconds": elapsed,
        "children": [
            {
                "job_id": j.id,
                "target_sparsity": j.method.get("target_sparsity"),
                "started_at": j.started_at,
                "finished_at": j.finished_at,
                "test_accuracy": (j.metrics or {}).get("test_accuracy"),
            }
            for j in jobs
        ],
    }


def table(rows: list[dict[str, Any]]) -> str:
    one = next(r["seconds"] for r in rows if r["workers"] == 1)
    lines = ["| workers | wall clock (s) | speed-up vs 1 worker |", "|---|---|---|"]
    lines += [f"| {r['workers']} | {r['seconds']:.1f} | {one / r['seconds']:.2f}× |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train", type=int, default=60000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--workers", default="1,2", help="worker counts to time, comma-separated (1 first)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    if counts[0] != 1:
        parser.error("--workers must start with 1 (the baseline of the speed-up)")
    with tempfile.TemporaryDirectory(prefix="dwf-sweep-scaling-") as tmp:
        work = Path(tmp)
        npz = idx_to_npz(MNIST_DIR, work / "mnist.npz", n_train=args.train, n_test=args.test)
        rows = [run_sweep(w, npz, args.children, args.epochs, work) for w in counts]
        for row in rows:
            print(f"{row['workers']} worker(s): {row['seconds']:.1f} s", flush=True)
    speedup = rows[0]["seconds"] / rows[-1]["seconds"]
    header = {"command": command("benchmarks.sweep_scaling"), "commit": commit(), "machine": machine(1)}
    result = {"header": header, "settings": vars(args) | {"out": str(args.out)}, "rows": rows, "speedup": speedup}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    verdict = "met" if speedup >= TARGET_SPEEDUP else "missed"
    args.out.with_suffix(".md").write_text(
        f"# A sweep on 1 worker and on {counts[-1]}\n\nCommand: `{header['command']}` · commit {header['commit']} · "
        f"{header['machine']} · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        f"`dwf serve --workers N` (embedded stack), one sweep of LeNet-300-100 (zoo) with {args.children} children "
        f"(target sparsity {', '.join(map(str, targets(args.children)))}), {args.epochs} epochs each, MNIST "
        f"{args.train}/{args.test}; wall clock from POST /v1/sweeps to the sweep finished (frontier stored).\n\n"
        f"{table(rows)}\n\nTarget ≥ {TARGET_SPEEDUP}× on 2 workers: **{verdict}** ({speedup:.2f}×).\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
