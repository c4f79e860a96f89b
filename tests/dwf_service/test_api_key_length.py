"""A DWF_API_KEY that could never match a request (not 16-256 characters) stops `dwf serve`, `dwf keys` and the API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from dwf_service.auth import add_key
from dwf_service.cli import app
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope

ROOT = Path(__file__).resolve().parents[2]
SHORT = "tooshort"  # 8 characters: looked up by no request (auth.lookup_prefix), so every request would be 401
RULE = "an API key must be 16 to 256 characters long (this one has 8)"
runner = CliRunner()


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: DWF_API_KEY: ") and RULE in lines[0], lines[0]
    assert SHORT not in lines[0]  # a refused key is still a secret: never echoed
    return lines[0]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Calls that reached the real `dwf serve` (replaced by a recorder, so nothing starts)."""
    calls: list[Any] = []
    monkeypatch.setattr("dwf_service.serve.serve", lambda settings, *args, **kwargs: calls.append(settings))
    return calls


def test_dwf_serve_refuses_a_short_key_in_one_line(tmp_path: Path, served: list[Any]) -> None:
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path)], env={"DWF_API_KEY": SHORT})
    assert result.exit_code == 1, result.stdout
    _one_error_line(result.stderr)
    assert served == []


def test_dwf_serve_accepts_a_16_character_key(tmp_path: Path, served: list[Any]) -> None:
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path)], env={"DWF_API_KEY": "k" * 16})
    assert result.exit_code == 0, result.stderr
    assert [s.api_key for s in served] == ["k" * 16]


def test_dwf_keys_refuses_a_short_key_in_one_line(tmp_path: Path) -> None:
    for args in (["list"], ["create", "--tenant", "acme"]):
        result = runner.invoke(app, ["keys", *args, "--data-dir", str(tmp_path)], env={"DWF_API_KEY": SHORT})
        assert result.exit_code == 1, result.stdout
        _one_error_line(result.stderr)
        assert result.stdout == ""


def test_the_api_refuses_a_short_key_at_start(tmp_path: Path) -> None:
    """`uvicorn api.main:app` imports api.main: with a short DWF_API_KEY that exits with the rule, in one line."""
    env = {**os.environ, "DWF_API_KEY": SHORT, "DWF_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", "import api.main"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    _one_error_line(proc.stderr)


def test_a_key_that_could_never_match_is_not_stored(ctx: ServiceContext) -> None:
    with session_scope(ctx.sessions) as session, pytest.raises(ValueError, match="16 to 256 characters"):
        add_key(session, SHORT)
    ctx.settings.api_key = SHORT  # set past the settings validator: app startup still refuses it
    with (
        pytest.raises(ValueError, match="16 to 256 characters"),
        TestClient(create_app(ctx.settings, context=ctx, reconciler=False)),
    ):
        pass
