"""Regenerate docs/img/dashboard-job.png: run the dashboard browser test with its screenshot going to docs/img.

    .venv/bin/python scripts/screenshot_dashboard.py            # needs /usr/bin/chromium and playwright

It starts a ``dwf serve`` of its own on a free port (tests/e2e/test_dashboard.py), submits a 10-epoch LeNet-300-100
job on 3000 MNIST images with a 4-point frontier through the form (DWF_DASHBOARD_TRAIN, _EPOCHS, _FRONTIER override
these), waits for it to succeed and saves the job page. Takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Run the one test with DWF_SCREENSHOT_DIR=docs/img; returns pytest's exit code."""
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    env = {
        "DWF_DASHBOARD_TRAIN": "3000",
        "DWF_DASHBOARD_EPOCHS": "10",
        "DWF_DASHBOARD_FRONTIER": "2, 5, 10, 20",
        **os.environ,
        "DWF_SCREENSHOT_DIR": str(out),
    }
    test = "tests/e2e/test_dashboard.py::test_dashboard_submit_watch_download"
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT, env=env)
    if code == 0:
        sys.stdout.write(f"wrote {out / 'dashboard-job.png'}\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
