"""/v1/jobs with ``lr_probe``: on by default when no lr is given, off with an lr, as asked when set; typed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dwf_service.context import ServiceContext
from dwf_service.models import Job
from tests.api.test_jobs import body


@pytest.mark.parametrize(
    ("method", "resolved"),
    [({}, True), ({"lr": 0.05}, False), ({"lr": 0.05, "lr_probe": True}, True), ({"lr_probe": False}, False)],
)
def test_lr_probe_reaches_the_training_config(
    client: TestClient, files: dict[str, Any], ctx: ServiceContext, method: dict[str, Any], resolved: bool
) -> None:
    from dwf_service.runner import _spec

    resp = client.post("/v1/jobs", json=body(files, **method))
    assert resp.status_code == 200, resp.text
    assert resp.json()["method"].get("lr_probe") == method.get("lr_probe")
    with ctx.sessions() as session:
        job = session.get(Job, resp.json()["id"])
        assert job is not None
        spec = _spec(ctx, job, {"model": Path("m.onnx"), "dataset": Path("d.npz")}, Path("out"), None)
    assert spec.train.resolved().lr_probe is resolved


def test_a_non_boolean_lr_probe_is_422(client: TestClient, files: dict[str, Any]) -> None:
    resp = client.post("/v1/jobs", json=body(files, lr_probe="sometimes"))
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["param"] == "method.lr_probe"
