"""method.precision (dwf_core.precision): one of auto / fp32 / bf16, stored as given, passed to the worker's
TrainConfig; anything else is a 422 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dwf_core.precision import PRECISIONS
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job
from dwf_service.runner import _spec
from tests.api.test_jobs import body


@pytest.mark.parametrize("precision", ["fp16", "BF16", "", 32, None])
def test_bad_values_are_422_naming_the_field(client: TestClient, files: dict[str, Any], precision: object) -> None:
    resp = client.post("/v1/jobs", json=body(files, lam=1e-4, precision=precision))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "method.precision")


def test_the_setting_reaches_the_train_config(
    client: TestClient, files: dict[str, Any], ctx: ServiceContext, tmp_path: Path
) -> None:
    jobs = {}
    for precision in PRECISIONS:  # the API's choices are dwf_core's
        resp = client.post("/v1/jobs", json=body(files, lam=1e-4, precision=precision))
        assert resp.status_code == 200, resp.text
        assert resp.json()["method"]["precision"] == precision
        jobs[resp.json()["id"]] = precision
    default = client.post("/v1/jobs", json=body(files, lam=1e-4)).json()
    assert default["method"]["precision"] == "auto"  # the default, shown as such
    jobs[default["id"]] = "auto"
    paths = {"model": tmp_path / "m.onnx", "dataset": tmp_path / "d.npz"}
    with session_scope(ctx.sessions) as session:
        for jid, expected in jobs.items():
            job = session.get(Job, jid)
            assert job is not None
            train = _spec(ctx, job, paths, tmp_path, None).train
            assert train.precision == expected
            train.validate()
