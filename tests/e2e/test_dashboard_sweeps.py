"""The dashboard's sweep pages in chromium, on the static files with the API answered by hand-written sweeps: the
list, a running sweep's children table, and a finished one's frontier.png loaded with the API key; cancel."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_dashboard import _require_browser, browser_page, fulfill_static
from tests.e2e.test_dashboard_charts import ORIGIN

pytestmark = pytest.mark.slow

# A 1×1 PNG: the dashboard only has to show what the API serves.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
KEY = "dwf_dashboard-sweep-key-0123456789abcdef"


def _child(job_id: str, target: float, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "point": {"target_sparsity": target},
        "status": status,
        "epoch": extra.get("epoch"),
        "epochs": 5,
        "test_accuracy": extra.get("acc"),
        "sparsity": extra.get("sparsity"),
        "compression_ratio": extra.get("cr"),
        "mac_fraction": None,
        "error_code": extra.get("error"),
        "url": f"/v1/jobs/{job_id}",
    }


def _sweep(sweep_id: str, status: str, children: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": sweep_id,
        "object": "sweep",
        "status": status,
        "model": {"name": "lenet_300_100"},
        "weights_file_id": None,
        "dataset": {"file_id": "file-d"},
        "method": {"epochs": 5},
        "seed": 0,
        "metadata": None,
        "grid": {"target_sparsity": [0.9, 0.99]},
        "counts": {},
        "children": children,
        "cancel_requested": status == "cancelled",
        "created_at": "2026-12-04T06:00:00.000Z",
        "finished_at": None if status in ("running", "queued") else "2026-12-04T06:10:00.000Z",
        "urls": {},
    }


RUNNING = _sweep(
    "swp-running", "running", [_child("job-a", 0.9, "succeeded", acc=0.975, sparsity=0.9, cr=10.0),
                               _child("job-b", 0.99, "running", epoch=2)]
)  # fmt: skip
DONE = _sweep(
    "swp-done", "partially_failed", [_child("job-c", 0.9, "succeeded", acc=0.9712, sparsity=0.9, cr=10.0),
                                     _child("job-d", 0.99, "failed", error="non_finite_loss")]
)  # fmt: skip


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    _require_browser()
    from playwright.sync_api import Route

    calls: list[str] = []

    def serve(route: Route) -> None:
        request = route.request
        path = request.url.removeprefix(ORIGIN).split("?")[0]
        calls.append(f"{request.method} {path} {request.headers.get('authorization')}")
        answers: dict[str, Any] = {
            "/v1/sweeps": {"object": "list", "data": [RUNNING, DONE], "has_more": False},
            "/v1/sweeps/swp-running": RUNNING,
            "/v1/sweeps/swp-done": DONE,
            "/v1/sweeps/swp-running/cancel": _sweep("swp-running", "running", RUNNING["children"]),
            "/v1/sweeps/swp-done/artifacts": {
                "object": "list",
                "data": [
                    {"name": name, "bytes": size, "sha256": "x", "url": f"/v1/sweeps/swp-done/artifacts/{name}"}
                    for name, size in (("frontier.json", 2), ("frontier.png", len(PNG)))
                ],
            },
        }
        if fulfill_static(route, path):
            return
        if path == "/v1/sweeps/swp-done/artifacts/frontier.png":
            route.fulfill(body=PNG, content_type="application/octet-stream")
        elif path in answers:
            route.fulfill(body=json.dumps(answers[path]), content_type="application/json")
        else:
            route.fulfill(status=404, body=json.dumps({"error": {"message": path}}), content_type="application/json")

    with browser_page(serve, origin=ORIGIN, api_key=KEY) as (tab, errors):
        tab.calls = calls
        yield tab
        assert errors == []


def test_sweep_list_and_a_running_sweep(page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{ORIGIN}/#/sweeps")
    rows = page.locator("#sweeps-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("swp-running")
    expect(rows.nth(0)).to_contain_text("target_sparsity = 0.9, 0.99")
    expect(rows.nth(1).locator(".badge")).to_have_text("partially_failed")
    rows.nth(0).locator("a").click()
    expect(page.locator("#sweep-status")).to_have_text("running")
    children = page.locator("#sweep-children tbody tr")
    expect(children).to_have_count(2)
    expect(children.nth(0).locator("td[data-col='accuracy']")).to_have_text("97.50%")
    expect(children.nth(1)).to_contain_text("2/5")
    expect(page.locator("#sweep-cancel")).to_be_visible()
    with page.expect_request(f"{ORIGIN}/v1/sweeps/swp-running/cancel") as sent:
        page.locator("#sweep-cancel").click()
    assert sent.value.method == "POST" and sent.value.headers["authorization"] == f"Bearer {KEY}"
    expect(page.locator("#frontier-img")).to_have_count(0)


def test_a_finished_sweep_shows_its_frontier(page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{ORIGIN}/#/sweeps/swp-done")
    expect(page.locator("#sweep-status")).to_have_text("partially_failed")
    expect(page.locator("#sweep-children tbody tr").nth(1)).to_contain_text("non_finite_loss")
    expect(page.locator("#frontier-img")).to_be_visible()
    assert page.locator("#frontier-img").evaluate("img => img.naturalWidth") == 1
    expect(page.locator("#sweep-frontier [data-artifact='frontier.json']")).to_be_visible()
    expect(page.locator("#sweep-cancel")).to_be_hidden()
    assert f"GET /v1/sweeps/swp-done/artifacts/frontier.png Bearer {KEY}" in page.calls
