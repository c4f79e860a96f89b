"""The SDK sends ``devices`` (a multi-GPU DDP job) in the job's method, and only when given."""

from __future__ import annotations

import json
from typing import Any

import httpx

from dwf_client import Client
from tests.dwf_client.test_sdk import _job


def test_submit_sends_devices_in_the_method_only_when_given() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        return httpx.Response(200, json=_job(method=body["method"]))

    client = Client("http://dwf.test", "key-1", transport=httpx.MockTransport(handler), sleep=lambda _s: None)
    job = client.submit("lenet_300_100", "file-d", target_sparsity=0.9, devices=2)
    assert sent[-1]["method"] == {"type": "dwf", "target_sparsity": 0.9, "devices": 2}
    assert job.method["devices"] == 2
    client.submit("lenet_300_100", "file-d", target_sparsity=0.9)
    assert "devices" not in sent[-1]["method"]
