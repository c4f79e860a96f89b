"""method.augment (dwf_core.augment): validated by the API without torch, stored as given, passed to the worker's
TrainConfig; a bad value is a 422 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.schemas import MAX_SHIFT
from dwf_core import augment as core
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job
from dwf_service.runner import _spec
from tests.api.test_jobs import body

assert MAX_SHIFT == core.MAX_SHIFT, "mirror drifted"


@pytest.mark.parametrize(
    ("augment", "says"),
    [
        ("rotate", "unknown transform 'rotate'"),
        ("shift:0", "1..16"),
        ("shift:99", "1..16"),
        ("flip,flip", "given twice"),
        ("x" * 65, "at most 64 characters"),
        (3, "valid string"),
    ],
)
def test_bad_values_are_422_naming_the_field(
    client: TestClient, files: dict[str, Any], augment: object, says: str
) -> None:
    resp = client.post("/v1/jobs", json=body(files, lam=1e-4, augment=augment))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "method.augment")
    assert says in error["message"]


def test_the_setting_reaches_the_train_config(
    client: TestClient, files: dict[str, Any], ctx: ServiceContext, tmp_path: Path
) -> None:
    given = client.post("/v1/jobs", json=body(files, lam=1e-4, augment="shift:3,flip"))
    assert given.status_code == 200, given.text
    assert given.json()["method"]["augment"] == "shift:3,flip"
    default = client.post("/v1/jobs", json=body(files, lam=1e-4)).json()
    assert "augment" not in default["method"]  # unset fields are left out
    paths = {"model": tmp_path / "m.onnx", "dataset": tmp_path / "d.npz"}
    with session_scope(ctx.sessions) as session:
        for jid, expected in ((given.json()["id"], "shift:3,flip"), (default["id"], None)):
            job = session.get(Job, jid)
            assert job is not None
            train = _spec(ctx, job, paths, tmp_path, None).train
            assert train.augment == expected
            train.validate()
