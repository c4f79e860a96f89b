"""/v1/jobs with structured DWF: ``structure``, ``target_macs`` and ``mac_frontier`` are checked and reach the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dwf_service.context import ServiceContext
from dwf_service.models import Job
from tests.api.test_jobs import body


def test_structure_and_target_macs_reach_the_training_config(
    client: TestClient,
    files: dict[str, Any],
    ctx: ServiceContext,
) -> None:
    from dwf_service.runner import _spec

    resp = client.post("/v1/jobs", json=body(files, structure="units", target_macs=0.1, mac_frontier=[0.5, 0.2]))
    assert resp.status_code == 200, resp.text
    assert resp.json()["method"]["structure"] == "units" and resp.json()["method"]["target_macs"] == 0.1
    with ctx.sessions() as session:
        job = session.get(Job, resp.json()["id"])
        assert job is not None
        spec = _spec(ctx, job, {"model": Path("m.onnx"), "dataset": Path("d.npz")}, Path("out"), None)
    cfg = spec.train.resolved()
    assert (cfg.structure, cfg.target_macs, cfg.mac_frontier) == ("units", 0.1, [0.5, 0.2])


def test_structure_defaults_to_weights(
    client: TestClient,
    files: dict[str, Any],
) -> None:
    resp = client.post("/v1/jobs", json=body(files))
    assert resp.status_code == 200, resp.text
    assert resp.json()["method"].get("structure", "weights") == "weights"


@pytest.mark.parametrize(
    ("method", "param"),
    [
        ({"structure": "channels"}, "method.structure"),
        ({"structure": "units", "target_macs": 0}, "method.target_macs"),
        ({"structure": "units", "target_macs": 1.5}, "method.target_macs"),
        ({"target_macs": 0.1}, "method"),
        ({"structure": "units", "target_sparsity": 0.9}, "method"),
        ({"structure": "units", "frontier": [10]}, "method"),
        ({"structure": "units", "mac_frontier": [1.0]}, "method.mac_frontier.0"),
        ({"type": "gmp", "target_sparsity": 0.9, "structure": "units"}, "method"),
    ],
)
def test_bad_structured_methods_are_422_naming_the_field(
    client: TestClient,
    files: dict[str, Any],
    method: dict[str, Any],
    param: str,
) -> None:
    resp = client.post("/v1/jobs", json=body(files, **method))
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["param"] == param
