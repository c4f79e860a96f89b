"""A transformers config.json as a model upload: sniffed as hf-config, checked at upload, run by the worker's code.

The job goes through the API (upload, create) and then the real task bodies (dwf_service.runner) on the same
database and storage, as the worker runs them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import save

from dwf_service import jobs, runner
from dwf_service.context import ServiceContext
from dwf_service.models import File
from tests.token_helpers import BERT, token_npz


def _upload(client: TestClient, name: str, payload: bytes, purpose: str) -> dict[str, Any]:
    resp = client.post("/v1/files", files={"file": (name, payload)}, data={"purpose": purpose})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _config(**changes: object) -> bytes:
    return json.dumps({**BERT, **changes}, indent=2).encode()


def _submit(client: TestClient, model_id: str, dataset_id: str, **extra: Any) -> str:
    body = {
        "model": {"file_id": model_id},
        "dataset": {"file_id": dataset_id},
        "method": {"epochs": 2, "batch_size": 64, "target_sparsity": 0.5},
        **extra,
    }
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


@pytest.fixture
def tokens(tmp_path: Path) -> bytes:
    return token_npz(tmp_path / "tokens.npz", n_train=300, n_test=100).read_bytes()


def test_config_and_token_npz_job_succeeds(client: TestClient, ctx: ServiceContext, tokens: bytes) -> None:
    model = _upload(client, "config.json", _config(), "model")
    dataset = _upload(client, "tokens.npz", tokens, "dataset")
    assert (model["format"], dataset["format"]) == ("hf-config", "npz")
    with ctx.sessions() as session:  # the quota counter reads a token npz's labels_train
        row = session.get(File, dataset["id"])
        assert row is not None and row.examples == 300
    job_id = _submit(client, model["id"], dataset["id"])
    runner.validate_job(ctx, job_id)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' tracer warnings during the ONNX export
        runner.train_job(ctx, job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == jobs.SUCCEEDED, job.get("error")
    metrics = job["metrics"]
    assert metrics["sparsity"] > 0.4 and metrics["model"]["source"] == "hf-config"
    names = {a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}
    assert {"model.safetensors", "model.sparse.safetensors", "metrics.json"} <= names


def test_config_may_come_with_weights(client: TestClient, ctx: ServiceContext, tokens: bytes, tmp_path: Path) -> None:
    """An architecture-only config takes a weights file (transformers' own keys); an ONNX graph still may not."""
    from dwf_core.intake import build_hf_model

    (tmp_path / "config.json").write_bytes(_config())
    built = build_hf_model(tmp_path / "config.json", num_classes=3, input_shape=(2, 16), tokens=True)
    weights = save({k: v.contiguous() for k, v in built.state_dict().items()})
    model = _upload(client, "config.json", _config(), "model")
    dataset = _upload(client, "tokens.npz", tokens, "dataset")
    weights_id = _upload(client, "model.safetensors", weights, "weights")["id"]
    job_id = _submit(client, model["id"], dataset["id"], weights_file_id=weights_id)
    runner.validate_job(ctx, job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "queued", job.get("error")


@pytest.mark.parametrize(
    ("payload", "status", "code", "param"),
    [
        (
            _config(auto_map={"AutoModelForSequenceClassification": "repo--m.Model"}),
            415,
            "remote_code_refused",
            "auto_map",
        ),
        (_config(model_type=7), 422, "hf_config_invalid", "model_type"),
        (_config(use_pretrained_backbone=True), 422, "hf_config_unsupported", "use_pretrained_backbone"),
        (b'{"model_type": "bert", ', 422, "corrupt_file", "file"),
    ],
    ids=["auto_map", "no-model_type", "pretrained-backbone", "truncated"],
)
def test_bad_configs_are_refused_at_upload(
    client: TestClient, payload: bytes, status: int, code: str, param: str
) -> None:
    resp = client.post("/v1/files", files={"file": ("config.json", payload)}, data={"purpose": "model"})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error


def test_a_config_is_not_a_dataset(client: TestClient) -> None:
    resp = client.post("/v1/files", files={"file": ("config.json", _config())}, data={"purpose": "dataset"})
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "unsupported_format"


def test_unknown_model_type_fails_validation(client: TestClient, ctx: ServiceContext, tokens: bytes) -> None:
    """Only the worker knows transformers' model types: the upload passes, the job fails fast naming the key."""
    model = _upload(client, "config.json", _config(model_type="my-own-model"), "model")
    job_id = _submit(client, model["id"], _upload(client, "tokens.npz", tokens, "dataset")["id"])
    runner.validate_job(ctx, job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert (job["error"]["code"], job["error"]["param"]) == ("hf_unknown_model_type", "model_type")
