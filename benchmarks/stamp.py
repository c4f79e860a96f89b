"""What every benchmark result carries: the command that made it, the commit, the machine and the date."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
MNIST_DIR = ROOT.parent.parent / "shared" / "data" / "mnist"


def commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when the work tree has uncommitted changes to tracked files."""
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, check=False).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        # A copy of the tree without .git (a lent GPU machine gets one): the caller may say which commit it is.
        return os.environ.get("DWF_BENCH_COMMIT", "unknown")
    return head + ("+dirty" if dirty else "")


def command(module: str, argv: list[str] | None = None) -> str:
    """The command line as it would be typed from the repo root, OMP_NUM_THREADS included when set."""
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    return f"{prefix}python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)


def machine(threads: int | None = None) -> str:
    """CPU architecture, core count and torch threads per run (or the GPU name)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    threads = threads or torch.get_num_threads()
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {threads} torch thread(s) per run"


def stamp(module: str, threads: int | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """The header every results file starts with (``argv``: the arguments, default sys.argv[1:])."""
    return {
        "command": command(module, argv),
        "commit": commit(),
        "machine": machine(threads),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
    }


def stamp_line(header: dict[str, Any]) -> str:
    """One Markdown line with the stamp."""
    return f"Command: `{header['command']}` · commit {header['commit']} · {header['machine']} · {header['date']}"
