"""/v1/jobs with ``cut``, ``unit_cut`` and ``unit_multiple``: checked against the method, reach the run; the SDK sends
cut when set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from dwf_service.context import ServiceContext
from dwf_service.models import Job
from tests.api.test_jobs import body
from tests.dwf_client.test_sdk import _client, _job


def test_the_unit_multiple_limit_mirrors_dwf_core() -> None:
    from api.schemas import MAX_UNIT_MULTIPLE
    from dwf_core.config import MAX_UNIT_MULTIPLE as CORE_MAX

    assert MAX_UNIT_MULTIPLE == CORE_MAX


@pytest.mark.parametrize(("cut", "resolved"), [("final", "final"), ("gradual", "gradual"), (None, "gradual")])
def test_cut_reaches_the_training_config(
    client: TestClient,
    files: dict[str, Any],
    ctx: ServiceContext,
    cut: str | None,
    resolved: str,
) -> None:
    from dwf_service.runner import _spec

    method: dict[str, Any] = {"target_sparsity": 0.9} | ({"cut": cut} if cut else {})
    resp = client.post("/v1/jobs", json=body(files, **method))
    assert resp.status_code == 200, resp.text
    with ctx.sessions() as session:
        job = session.get(Job, resp.json()["id"])
        assert job is not None
        spec = _spec(ctx, job, {"model": Path("m.onnx"), "dataset": Path("d.npz")}, Path("out"), None)
    assert spec.train.resolved().cut == resolved


@pytest.mark.parametrize("unit_cut", ["gradual", "final"])
def test_unit_cut_and_a_gradual_weight_cut_of_structure_both_reach_the_training_config(
    client: TestClient, files: dict[str, Any], ctx: ServiceContext, unit_cut: str
) -> None:
    from dwf_service.runner import _spec

    method = {"structure": "both", "target_sparsity": 0.99, "target_macs": 0.1, "cut": "gradual", "unit_cut": unit_cut,
              "unit_multiple": 16}  # fmt: skip
    resp = client.post("/v1/jobs", json=body(files, **method))
    assert resp.status_code == 200, resp.text
    with ctx.sessions() as session:
        job = session.get(Job, resp.json()["id"])
        assert job is not None
        spec = _spec(ctx, job, {"model": Path("m.onnx"), "dataset": Path("d.npz")}, Path("out"), None)
    resolved = spec.train.resolved()
    assert (resolved.cut, resolved.unit_cut, resolved.structure) == ("gradual", unit_cut, "both")
    assert resolved.unit_multiple == 16


@pytest.mark.parametrize(
    "method",
    [
        {"target_sparsity": 0.9, "cut": "sometimes"},
        {"cut": "final"},  # no target
        {"type": "gmp", "target_sparsity": 0.9, "cut": "gradual"},
        {"structure": "units", "target_macs": 0.5, "cut": "gradual"},
        {"structure": "units", "unit_cut": "gradual"},  # no MAC budget
        {"structure": "units", "target_macs": 0.5, "unit_cut": "sometimes"},
        {"structure": "units", "unit_multiple": 16},  # no MAC budget to round
        {"structure": "units", "target_macs": 0.5, "unit_multiple": 0},
        {"structure": "units", "target_macs": 0.5, "unit_multiple": 2048},
    ],
)
def test_bad_cut_is_422_naming_the_field(
    client: TestClient,
    files: dict[str, Any],
    method: dict[str, Any],
) -> None:
    resp = client.post("/v1/jobs", json=body(files, **method))
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["param"] in ("method.cut", "method.unit_cut", "method.unit_multiple", "method")


def test_sdk_sends_cut_only_when_set() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content)["method"])
        return httpx.Response(200, json=_job())

    client = _client(handler)
    client.submit("lenet5", "file-d", target_sparsity=0.9, cut="final", epochs=2)
    client.submit("lenet5", "file-d", target_sparsity=0.9, epochs=2)
    assert sent[0]["cut"] == "final" and "cut" not in sent[1]
