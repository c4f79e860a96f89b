"""Webhooks end to end: a real ``dwf serve`` (uvicorn + its sender thread + a real Celery worker) calls real local
HTTP receivers for a real job: every status change in order, signed, retried until the receiver answers 2xx; the
tenant's webhook for a job that fails validation; the deliveries through the API, the SDK and ``dwf deliveries``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dwf_client import Client
from dwf_client.webhooks import verify_signature
from tests.e2e.test_embedded import ROOT, Server
from tests.service_helpers import mlp_onnx, mnist_npz, upload
from tests.webhook_receiver import Call, running_receiver

pytestmark = pytest.mark.slow
SECRET = "whsec_e2e-secret-0123456789"
ORDER = ["job.validating_files", "job.queued", "job.running", "job.succeeded"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``dwf serve`` whose webhooks retry after 0.3 s, 0.6 s, … and whose sender looks every 0.2 s."""
    srv = Server(
        tmp_path_factory.mktemp("serve-webhooks") / "data",
        DWF_WEBHOOK_BASE_DELAY_SECONDS="0.3",
        DWF_WEBHOOK_POLL_SECONDS="0.2",
        OMP_NUM_THREADS="1",
    )
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def _types(calls: list[Call]) -> list[str]:
    return [str(c.event["type"]) for c in calls]


def test_a_real_job_calls_its_webhook_on_every_status_change_in_order(server: Server, tmp_path: Path) -> None:
    data = mnist_npz(tmp_path / "mnist.npz", 1000, 200)
    model = mlp_onnx(tmp_path / "mlp.onnx", hidden=(64,))
    answers = iter([500, 500])  # the first delivery fails twice, then every call succeeds

    with running_receiver(lambda _call: next(answers, 200)) as receiver:
        key = server.client.headers["Authorization"].removeprefix("Bearer ")
        with Client(server.url, key) as client:
            job = client.submit(
                model, data, depth=3, epochs=1, batch_size=64, webhook=receiver.url, webhook_secret=SECRET
            )
            assert job.webhook is not None and job.webhook.url == receiver.url and job.webhook.secret is None
            done = client.wait_for_job(job.id, timeout=300)
            assert done.status == "succeeded", done
            calls = receiver.wait_for(lambda got: "job.succeeded" in _types(got), timeout=60)
            deliveries = client.list_webhook_deliveries(job.id)

    assert _types(calls) == [ORDER[0], ORDER[0], *ORDER]  # validating_files 3 times (500, 500, 200), then one call each
    assert receiver.answers == [500, 500, 200, 200, 200, 200]
    for call in calls:
        verify_signature(call.body, call.headers["x-dwf-signature"], SECRET)
        assert call.headers["x-dwf-event"] == call.event["type"] and call.event["data"]["id"] == job.id
    assert len({c.event["id"] for c in calls[:3]}) == 1  # a retry re-sends the same event (receivers de-duplicate)
    statuses = [c.event["data"]["status"] for c in calls[2:]]
    assert statuses == ["validating_files", "queued", "running", "succeeded"]
    final = calls[-1].event["data"]
    assert done.metrics is not None and final["metrics"]["test_accuracy"] == done.metrics["test_accuracy"]
    assert final["previous_status"] == "running" and "layers" not in final["metrics"]

    assert [d.event for d in deliveries] == ORDER
    assert [(d.status, d.attempts, d.last_status_code) for d in deliveries] == [
        ("delivered", 3, 200),
        ("delivered", 1, 200),
        ("delivered", 1, 200),
        ("delivered", 1, 200),
    ]
    cli = _dwf(server, "deliveries", job.id)
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.strip().splitlines()
    assert len(lines) == 4 and "job.validating_files" in lines[0] and "attempts=3" in lines[0]
    assert all("delivered" in line and "HTTP 200" in line for line in lines)


def _dwf(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    key = server.client.headers["Authorization"].removeprefix("Bearer ")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DWF_SERVER": server.url, "DWF_API_KEY": key}
    env.pop("DWF_WEBHOOK_SECRET", None)
    return subprocess.run(
        [sys.executable, "-m", "dwf_service.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tenants_webhook_set_by_the_cli_hears_a_validation_failure(server: Server, tmp_path: Path) -> None:
    data = mnist_npz(tmp_path / "mnist.npz", 200, 50)
    narrow = mlp_onnx(tmp_path / "narrow.onnx", hidden=(16,), classes=5)  # 5 outputs for 10 classes: refused
    with running_receiver() as receiver:
        assert _dwf(server, "webhook", "show").returncode == 1
        set_ = _dwf(server, "webhook", "set", receiver.url)
        assert set_.returncode == 0 and set_.stdout.strip() == receiver.url, set_.stderr
        secret = set_.stderr.strip().rsplit(" ", 1)[-1]
        assert secret.startswith("whsec_") and "shown once" in set_.stderr
        shown = _dwf(server, "webhook", "show")
        assert shown.stdout.strip() == receiver.url and secret not in shown.stdout + shown.stderr
        try:
            request = {
                "model": {"file_id": upload(server.client, narrow, "model")},
                "dataset": {"file_id": upload(server.client, data, "dataset")},
                "method": {"depth": 3, "epochs": 1},
            }
            job_id = server.client.post("/v1/jobs", json=request).json()["id"]
            calls = receiver.wait_for(lambda got: "job.failed" in _types(got), timeout=120)
        finally:
            assert _dwf(server, "webhook", "remove").returncode == 0
    assert server.client.get("/v1/webhook").status_code == 404
    assert _types(calls) == ["job.validating_files", "job.failed"]
    for call in calls:
        verify_signature(call.body, call.headers["x-dwf-signature"], secret)
    error = calls[-1].event["data"]["error"]
    assert calls[-1].event["data"]["id"] == job_id and error["code"] == "output_shape_mismatch"
    assert error["param"] == "model"
