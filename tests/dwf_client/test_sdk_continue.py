"""SDK and CLI of a continued job: ``Client.continue_job`` / ``create_job(JobContinue)`` send ``from_job`` and only the
settings given, ``Job.parent_job_id`` comes back; ``dwf submit --from-job`` refuses what a continued job cannot take."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dwf_client import Client, DwfMethod, JobContinue
from dwf_service.cli import app
from tests.dwf_client.test_sdk import _job


def _recording_client(sent: list[dict[str, Any]]) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        return httpx.Response(200, json=_job(parent_job_id=body["from_job"], method=body["method"]))

    return Client("http://dwf.test", "key-1", transport=httpx.MockTransport(handler), sleep=lambda _s: None)


def test_continue_job_sends_from_job_and_only_the_given_settings() -> None:
    sent: list[dict[str, Any]] = []
    client = _recording_client(sent)
    job = client.continue_job("job-parent", target_sparsity=0.99, lr=0.05, metadata={"why": "higher"})
    assert sent[-1] == {
        "from_job": "job-parent",
        "method": {"type": "dwf", "target_sparsity": 0.99, "lr": 0.05},
        "metadata": {"why": "higher"},
    }
    assert job.parent_job_id == "job-parent"
    again = client.create_job(JobContinue(from_job="job-parent", method=DwfMethod(target_sparsity=0.995, epochs=3)))
    assert sent[-1] == {"from_job": "job-parent", "method": {"type": "dwf", "target_sparsity": 0.995, "epochs": 3}}
    assert again.parent_job_id == "job-parent"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["submit", "--from-job", "job-x"], "--from-job needs --target-sparsity"),
        (["submit", "lenet5", "--from-job", "job-x", "--target-sparsity", "0.9"], "drop MODEL"),
        (["submit", "--from-job", "job-x", "--target-sparsity", "0.9", "--num-classes", "3"], "drop --num-classes"),
        (["submit", "lenet5"], "give MODEL and DATA"),
    ],
)
def test_submit_from_job_usage_errors(argv: list[str], said: str) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert said in result.output
