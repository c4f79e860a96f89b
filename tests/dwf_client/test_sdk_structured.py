"""SDK: ``submit(structure=..., target_macs=...)`` sends the structured settings in the job's method."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.dwf_client.test_sdk import _client, _job


def test_submit_sends_structure_and_target_macs() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content)["method"])
        return httpx.Response(200, json=_job())

    client = _client(handler)
    client.submit("lenet5", "file-d", structure="units", target_macs=0.1, mac_frontier=[0.5, 0.2], epochs=20)
    client.submit("lenet5", "file-d", epochs=2)
    assert sent[0]["structure"] == "units" and sent[0]["target_macs"] == 0.1 and sent[0]["mac_frontier"] == [0.5, 0.2]
    assert "structure" not in sent[1] and "target_macs" not in sent[1]  # unset: the server's default
