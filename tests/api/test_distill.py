"""method.distill / method.distill_temperature (dwf_core.distill): validated by the API, stored, and passed to the
worker's TrainConfig; a bad value is a 422 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.schemas import DEFAULT_TEMPERATURE, MAX_TEMPERATURE
from dwf_core import distill as core
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job
from dwf_service.runner import _spec
from tests.api.test_jobs import body

assert (DEFAULT_TEMPERATURE, MAX_TEMPERATURE) == (core.DEFAULT_TEMPERATURE, core.MAX_TEMPERATURE), "mirror drifted"


@pytest.mark.parametrize(
    ("method", "param"),
    [
        ({"distill": 1.5}, "method.distill"),
        ({"distill": -0.5}, "method.distill"),
        ({"distill": "half"}, "method.distill"),
        ({"distill_temperature": 0}, "method.distill_temperature"),
        ({"distill_temperature": MAX_TEMPERATURE + 1}, "method.distill_temperature"),
        ({"distill_schedule": "cosine"}, "method.distill_schedule"),
    ],
)
def test_bad_values_are_422_naming_the_field(
    client: TestClient, files: dict[str, Any], method: dict[str, Any], param: str
) -> None:
    resp = client.post("/v1/jobs", json=body(files, lam=1e-4, **method))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_value", param)


def test_a_baseline_cannot_distill(client: TestClient, files: dict[str, Any]) -> None:
    req = body(files, target_sparsity=0.9, distill=0.5)
    req["method"] = {**req["method"], "type": "gmp"}
    req["method"].pop("depth")
    resp = client.post("/v1/jobs", json=req)
    assert resp.status_code == 422, resp.text
    assert "distill" in resp.json()["error"]["message"]


def test_the_settings_reach_the_train_config(
    client: TestClient, files: dict[str, Any], ctx: ServiceContext, tmp_path: Path
) -> None:
    given = client.post(
        "/v1/jobs", json=body(files, lam=1e-4, distill=0.25, distill_temperature=2.0, distill_schedule="linear")
    )
    assert given.status_code == 200, given.text
    assert (given.json()["method"]["distill"], given.json()["method"]["distill_temperature"]) == (0.25, 2.0)
    default = client.post("/v1/jobs", json=body(files, lam=1e-4)).json()["id"]
    paths = {"model": tmp_path / "m.onnx", "dataset": tmp_path / "d.npz"}
    with session_scope(ctx.sessions) as session:
        # Unset stays unset (None) down to dwf_core, which decides from where the weights came (automatic_alpha).
        cases = ((given.json()["id"], (0.25, 2.0, "linear")), (default, (None, core.DEFAULT_TEMPERATURE, "constant")))
        for jid, expected in cases:
            job = session.get(Job, jid)
            assert job is not None
            train = _spec(ctx, job, paths, tmp_path, None).train
            assert (train.distill, train.distill_temperature, train.distill_schedule) == expected
