"""The SDK sends a transformers config.json as a model file (``dwf submit config.json DATA``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from dwf_client import Client
from dwf_client.errors import DwfError


def test_a_config_json_is_uploaded_as_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    uploads: list[bytes] = []
    models: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/files":
            uploads.append(request.read())
            file = {"id": "file-m", "bytes": 40, "sha256": "0" * 64, "filename": "config.json", "purpose": "model"}
            return httpx.Response(200, json={**file, "format": "hf-config", "created_at": "2026-11-26T01:00:00.000Z"})
        models.append(json.loads(request.content)["model"])
        job = {"id": "job-1", "object": "job", "status": "queued", "created_at": "2026-11-26T01:00:00.000Z"}
        return httpx.Response(200, json=job)

    monkeypatch.chdir(tmp_path)
    client = Client("http://dwf.test", "key-1", transport=httpx.MockTransport(handler), sleep=lambda _s: None)
    client.submit("config.json", "file-d", epochs=1)
    assert b'name="purpose"' in uploads[0] and b"model" in uploads[0] and b'filename="config.json"' in uploads[0]
    assert models == [{"file_id": "file-m"}]
    with pytest.raises(DwfError, match="no such file"):  # a missing .json is a local error, not a zoo name
        client.submit("missing.json", "file-d", epochs=1)
    assert len(models) == 1
