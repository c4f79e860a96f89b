"""Time a small job through the embedded service: upload → trained → downloaded sparse model.

    python -m benchmarks.service_small_job [--epochs 2] [--train 2000] [--test 500]

Starts `dwf serve` on a free port with a fresh data dir, uploads an MNIST subset (.npz), runs LeNet-300-100
with DWF (depth 3), downloads every artifact and writes benchmarks/results/service-small-job.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.service_helpers import wait_until_ready

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
MNIST = REPO.parent / "shared" / "data" / "mnist"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(epochs: int, n_train: int, n_test: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        npz = work / "mnist.npz"
        subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "make_mnist_npz.py"),
                str(MNIST),
                str(npz),
                "--train",
                str(n_train),
                "--test",
                str(n_test),
            ],
            check=True,
        )
        port, key = _free_port(), "dwf_benchmark_key_0123456789"
        env = {**os.environ, "DWF_API_KEY": key}
        log = work / "serve.log"
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "dwf"), "serve", "--port", str(port), "--data-dir", str(work / "data")],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(base, proc, log)
            client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
            started = time.monotonic()
            with open(npz, "rb") as fh:
                file_id = client.post(
                    "/v1/files", data={"purpose": "dataset"}, files={"file": ("mnist.npz", fh)}
                ).json()["id"]
            job = client.post(
                "/v1/jobs",
                json={
                    "model": {"name": "lenet_300_100"},
                    "dataset": {"file_id": file_id},
                    "method": {"type": "dwf", "depth": 3, "epochs": epochs},
                },
            ).json()
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.25)
                job = client.get(f"/v1/jobs/{job['id']}").json()
            if job["status"] != "succeeded":
                raise RuntimeError(f"job ended {job['status']}: {job['error']}")
            sizes = {}
            for art in client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]:
                sizes[art["name"]] = len(client.get(f"/v1/jobs/{job['id']}/artifacts/{art['name']}").content)
            elapsed = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {
        "seconds_upload_to_download": elapsed,
        "job": {k: job[k] for k in ("created_at", "started_at", "finished_at") if k in job},
        "test_accuracy": job["metrics"]["test_accuracy"],
        "compression_ratio": job["metrics"]["compression_ratio"],
        "artifact_bytes": sizes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args()
    result = measure(args.epochs, args.train, args.test)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    header = {
        "command": "python -m benchmarks.service_small_job " + " ".join(sys.argv[1:]),
        "commit": commit.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": dt.date.today().isoformat(),
        "settings": vars(args),
    }
    out = ROOT / "results" / "service-small-job"
    out.with_suffix(".json").write_text(json.dumps({"header": header, "result": result}, indent=2))
    out.with_suffix(".md").write_text(
        f"# Small job through the embedded service\n\nCommand: `{header['command']}` · commit {header['commit']} · "
        f"{header['machine']} · {header['date']}\n\nLeNet-300-100 (zoo), MNIST {args.train}/{args.test} as .npz, "
        f"DWF depth 3, {args.epochs} epochs: upload → job succeeded → all artifacts downloaded in "
        f"**{result['seconds_upload_to_download']:.1f} s**; test accuracy {100 * result['test_accuracy']:.2f}%, "
        f"CR {result['compression_ratio']:.2f} (2 epochs are far too few to sparsify; this measures the service).\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
