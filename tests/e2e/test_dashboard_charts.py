"""The job page's compression chart in chromium, on the real static files with the API answered by the test.

Each epoch's compression ratio is the trainer's monitor (weights below 1e-3), not the collapse's cut: a
target-sparsity job reads about 1× for every epoch and then ends at its target's CR. The chart must say so and
mark the final (or, while running, the target) cut. No ``dwf serve`` here: Playwright serves /static itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_dashboard import _require_browser, browser_page, fulfill_static

ORIGIN = "http://dwf.test"
JOB = "job-01chartstest"


def _job(status: str, history: list[dict[str, Any]], final_cr: float | None) -> dict[str, Any]:
    """A job object as GET /v1/jobs/{id} answers it: target sparsity 80 %, 3 epochs."""
    metrics = {"history": history}
    if final_cr is not None:
        metrics.update(compression_ratio=final_cr, sparsity=1 - 1 / final_cr, test_accuracy=0.9, layers=[])
    return {
        "id": JOB,
        "object": "job",
        "status": status,
        "phase": None,
        "model": {"name": "lenet_300_100", "file_id": None},
        "dataset": {"file_id": "file-1", "val_fraction": 0.1},
        "method": {"type": "dwf", "depth": 2, "epochs": 3, "target_sparsity": 0.8},
        "seed": 0,
        "progress": {"fraction": 1.0 if status == "succeeded" else 0.5, "epoch": 2, "epochs": 3},
        "metrics": metrics if status == "succeeded" else None,
        "error": None,
        "attempts": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": "2026-01-01T00:00:01Z",
        "finished_at": None,
    }


def _epoch(epoch: int) -> dict[str, Any]:
    """An epoch's metrics as the trainer emits them: the monitored CR of a target job barely above 1."""
    return {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "val_loss": 1.1 / epoch,
        "train_accuracy": 0.8,
        "val_accuracy": 0.8,
        "monitor_threshold": 0.001,
        "sparsity": 0.0004 * epoch,
        "compression_ratio": 1 / (1 - 0.0004 * epoch),
    }


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    """The dashboard in chromium, its /static files served from the tree and its API calls answered with 404."""
    _require_browser()
    from playwright.sync_api import Route

    def serve(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN).split("?")[0]
        if fulfill_static(route, path):
            return
        error = {"error": {"type": "invalid_request_error", "code": "not_found", "message": path, "param": None}}
        route.fulfill(status=404, body=json.dumps(error), content_type="application/json")

    with browser_page(serve, origin=ORIGIN) as (tab, errors):
        tab.goto(f"{ORIGIN}/")
        tab.wait_for_selector("#view-signin", state="visible")
        yield tab
        assert errors == []


def _chart_texts(page: Any) -> dict[str, Any]:
    return {
        "title": page.locator("#chart-cr svg .chart-title").text_content(),
        "texts": page.locator("#chart-cr svg text").all_text_contents(),
        "refs": page.locator("#chart-cr svg line.ref").count(),
        "points": page.locator("#chart-cr svg circle").count(),
    }


def test_succeeded_target_job_marks_the_final_cut(page: Any) -> None:
    history = [_epoch(e) for e in (1, 2, 3)]
    page.evaluate("job => { show('job'); renderJob(job); }", _job("succeeded", history, 5.0))
    seen = _chart_texts(page)
    assert seen["title"] == "CR per epoch at |w| < 0.001 (monitor, not the final cut)"
    assert seen["points"] == 3
    assert seen["refs"] == 1 and "final cut 5.0×" in seen["texts"]


def test_running_target_job_marks_its_target_while_epochs_arrive(page: Any) -> None:
    page.evaluate("job => { show('job'); state.history = []; renderJob(job); }", _job("running", [], None))
    for epoch in (1, 2):
        event = {
            "id": f"evt-{epoch}",
            "created_at": "2026-01-01T00:00:02Z",
            "type": "metrics",
            "level": "info",
            "message": f"epoch {epoch}",
            "data": _epoch(epoch),
        }
        page.evaluate("evt => addEvent(evt)", event)
    seen = _chart_texts(page)
    assert seen["title"] == "CR per epoch at |w| < 0.001 (monitor, not the final cut)"
    assert seen["points"] == 2
    assert seen["refs"] == 1 and "target 5.0×" in seen["texts"]
