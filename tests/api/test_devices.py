"""method.devices (DDP over several GPUs or CPU processes, dwf_core.distributed): accepted in 1..8, stored and passed
to the worker's TrainConfig; anything else is a 422 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.schemas import MAX_DEVICES
from dwf_core.distributed import MAX_DEVICES as CORE_MAX_DEVICES
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job
from dwf_service.runner import _spec
from tests.api.test_jobs import body

assert MAX_DEVICES == CORE_MAX_DEVICES, "the API's mirror of dwf_core's range drifted"


@pytest.mark.parametrize("bad", [0, -2, MAX_DEVICES + 1, "two", 1.5, None])
def test_bad_devices_are_422_naming_the_field(client: TestClient, files: dict[str, Any], bad: Any) -> None:
    resp = client.post("/v1/jobs", json=body(files, lam=1e-4, devices=bad))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "method.devices")


def test_devices_are_stored_and_reach_the_train_config(
    client: TestClient,
    files: dict[str, Any],
    ctx: ServiceContext,
    tmp_path: Path,
) -> None:
    resp = client.post("/v1/jobs", json=body(files, lam=1e-4, devices=2))
    assert resp.status_code == 200, resp.text
    assert resp.json()["method"]["devices"] == 2
    job_id = resp.json()["id"]
    default = client.post("/v1/jobs", json=body(files, lam=1e-4)).json()["id"]
    with session_scope(ctx.sessions) as session:
        for jid, expected in ((job_id, 2), (default, 1)):
            job = session.get(Job, jid)
            assert job is not None
            spec = _spec(ctx, job, {"model": tmp_path / "m.onnx", "dataset": tmp_path / "d.npz"}, tmp_path, None)
            assert spec.train.devices == expected
