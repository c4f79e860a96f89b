"""Every error uses the envelope; auth; health probes; the API process never imports torch."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from dwf_service.context import ServiceContext

WRONG_KEY = {"Authorization": "Bearer dwf_wrong-key-xxxxxxxxxxxxxxxx"}


def test_missing_and_wrong_keys_are_401(ctx: ServiceContext) -> None:
    with TestClient(create_app(ctx.settings, context=ctx, reconciler=False)) as anon:
        resp = anon.get("/v1/jobs")
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
        assert resp.json()["error"]["type"] == "authentication_error"
        resp = anon.get("/v1/jobs", headers={"Authorization": "Bearer dwf_wrong-key-xxxxxxxxxxxxxxxx"})
        assert resp.json()["error"]["code"] == "invalid_api_key"
        assert anon.get("/healthz").json() == {"status": "ok"}


def test_every_v1_route_requires_a_valid_key(ctx: ServiceContext) -> None:
    """Also the job-status route, which checks the key itself instead of through the router-level dependency."""
    app = create_app(ctx.settings, context=ctx, reconciler=False)
    # The OpenAPI paths carry the router prefixes whatever way this FastAPI version nests included routers.
    paths = {p: ops for p, ops in app.openapi()["paths"].items() if p.startswith("/v1/")}
    assert {"/v1/files", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events"} <= set(paths)
    with TestClient(app) as anon:
        for template, operations in paths.items():
            path = re.sub(r"{[^}]+}", "id-x", template)
            for method in operations:
                for headers, code in (({}, "missing_api_key"), (WRONG_KEY, "invalid_api_key")):
                    resp = anon.request(method.upper(), path, headers=headers)
                    assert resp.status_code == 401, (method, template, resp.status_code)
                    assert resp.json()["error"]["code"] == code


def test_404_405_422_use_the_envelope(client: TestClient) -> None:
    for resp, status in (
        (client.get("/v1/nowhere"), 404),
        (client.get("/v1/jobs/job-missing"), 404),
        (client.put("/v1/jobs"), 405),
        (client.get("/v1/jobs?limit=0"), 422),
        (client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422),
    ):
        assert resp.status_code == status
        assert set(resp.json()["error"]) == {"type", "code", "message", "param"}
    assert client.get("/v1/jobs?limit=0").json()["error"]["param"] == "limit"


def test_readyz_reports_each_dependency(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert body == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}


def test_api_never_imports_torch(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import io, sys
        from fastapi.testclient import TestClient
        from api.app import create_app
        from dwf_service.auth import add_key
        from dwf_service.db import session_scope
        from tests.service_helpers import make_context, make_settings
        ctx = make_context(make_settings(__import__("pathlib").Path({str(tmp_path)!r})), [])
        with session_scope(ctx.sessions) as s:
            add_key(s, "dwf_key-for-the-torch-test-0123456789")
        c = TestClient(create_app(ctx.settings, context=ctx, reconciler=False),
                       headers={{"Authorization": "Bearer dwf_key-for-the-torch-test-0123456789"}})
        f = c.post("/v1/files", files={{"file": ("m.onnx", b"\\x08\\x07" + bytes(64))}}, data={{"purpose": "model"}})
        d = c.post("/v1/files", files={{"file": ("d.csv", b"label,a\\n1,2\\n")}}, data={{"purpose": "dataset"}})
        j = c.post("/v1/jobs", json={{"model": {{"file_id": f.json()["id"]}}, "dataset": {{"file_id": d.json()["id"]}},
                                      "method": {{"epochs": 1}}}})
        assert j.status_code == 200, j.text
        assert c.get("/v1/jobs").status_code == 200
        assert c.get("/openapi.json").status_code == 200
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxruntime", "dwf_core")))
        """
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.strip().splitlines()[-1]
    assert "torch" not in loaded and "onnx" not in loaded, loaded
