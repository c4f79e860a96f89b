"""`dwf submit --structure units --target-macs` against a real `dwf serve`: the job runs D-Gating end to end."""

from __future__ import annotations

import json
from pathlib import Path

from tests.dwf_client.test_live import Serve, server, tiny_npz  # noqa: F401  (fixtures used by name)


def test_cli_submit_structured_job(server: Serve, tiny_npz: Path, tmp_path: Path) -> None:  # noqa: F811
    submitted = server.cli(
        "submit", "lenet5", str(tiny_npz), "--structure", "units", "--target-macs", "0.3", "--epochs", "1", "--wait",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr + server.log.read_text()[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["structure"] == "units" and metrics["config"]["target_macs"] == 0.3
    assert metrics["structured"]["mac_fraction"] <= 0.3
