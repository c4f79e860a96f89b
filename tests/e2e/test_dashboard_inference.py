"""The job page's Inference panel in chromium: MACs, parameters, ONNX bytes, latency, speed-ups, or why not.

One test runs a real job on a ``dwf serve`` of its own (through the API, then opened in the browser) and reads
the panel against the job's metrics.json; the others draw the panel from hand-written metrics on the static files
alone (skipped compaction, skipped measurement, markup in a reason shown as text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_dashboard import _require_browser, browser_page, fulfill_static
from tests.e2e.test_dashboard_charts import ORIGIN
from tests.e2e.test_dashboard_charts import _job as chart_job
from tests.e2e.test_embedded import Server
from tests.service_helpers import mnist_npz, upload

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------- a real job, end to end


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A ``dwf serve`` of its own (the dashboard is served by the API at /)."""
    _require_browser()
    srv = Server(tmp_path_factory.mktemp("dash-inference") / "data")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def test_succeeded_job_shows_its_inference_numbers(server: Server, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    dataset = upload(server.client, mnist_npz(tmp_path / "mnist-small.npz", 300, 200), "dataset")
    request = {
        "model": {"name": "lenet_300_100"},
        "dataset": {"file_id": dataset},
        "method": {"type": "dwf", "depth": 2, "epochs": 2, "batch_size": 64, "target_sparsity": 0.8},
    }
    created = server.client.post("/v1/jobs", json=request)
    assert created.status_code == 200, created.text
    job = server.wait(created.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job
    artifact = next(a for a in server.client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
                    if a["name"] == "metrics.json")  # fmt: skip
    metrics = server.client.get(artifact["url"]).json()
    inference = metrics["inference"]
    assert "skipped" not in inference and "skipped" not in metrics["compact"], metrics["compact"]

    key = json.loads((server.data_dir / "config.json").read_text())["api_key"]
    with browser_page(api_key=key) as (page, errors):
        page.goto(f"{server.url}/#/jobs/{job['id']}")
        expect(page.locator("#job-status")).to_have_text("succeeded")
        panel = page.locator("#job-inference")
        expect(panel).to_be_visible()
        expect(panel.locator("h2")).to_have_text("Inference")
        for model in ("dense", "compact"):
            row = panel.locator(f"tr[data-model='{model}']")
            expect(row.locator("td[data-col='macs']")).to_have_text(f"{inference[model]['macs']:,}")
            expect(row.locator("td[data-col='latency-1']")).not_to_have_text("—")
            expect(row.locator("td[data-col='latency-64']")).not_to_have_text("—")
        # the int8 row is there exactly when the job quantized its compact model
        expect(panel.locator("tr[data-model='int8']")).to_have_count(1 if "compact_int8" in inference else 0)
        notes = panel.locator("#inference-notes").inner_text()
        assert "Compact vs dense" in notes and "max |Δlogit|" in notes, notes
        if "test_accuracy" in metrics["compact"].get("int8", {}):
            assert f"int8 test accuracy {100 * metrics['compact']['int8']['test_accuracy']:.2f}%" in notes
        assert errors == []


# ---------------------------------------------------------------------------- drawn from hand-written metrics


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    """The dashboard's static files in chromium, every API call answered with 404 (the tests call renderJob)."""
    _require_browser()
    from playwright.sync_api import Route

    def serve(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN).split("?")[0]
        if fulfill_static(route, path):
            return
        route.fulfill(status=404, body=json.dumps({"error": {"message": path}}), content_type="application/json")

    with browser_page(serve, origin=ORIGIN) as (tab, errors):
        tab.goto(f"{ORIGIN}/")
        tab.wait_for_selector("#view-signin", state="visible")
        yield tab
        assert errors == []


def _render(page: Any, **metrics: Any) -> dict[str, Any]:
    job = chart_job("succeeded", [], 5.0)
    job["metrics"].update(metrics)
    page.evaluate("job => { show('job'); renderJob(job); }", job)
    panel = page.locator("#job-inference")
    return {
        "visible": panel.is_visible(),
        "rows": panel.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.model)"),
        "cells": panel.locator("tbody td").all_text_contents(),
        "notes": panel.locator("#inference-notes li").all_text_contents(),
        "images": panel.locator("img").count(),
    }


def _model(macs: int | None, params: int | None, nbytes: int, latency: tuple[float, float]) -> dict[str, Any]:
    return {
        "file": "model.onnx",
        "bytes": nbytes,
        "params": params,
        "nonzero_params": params,
        "macs": macs,
        "latency_ms": {"1": latency[0], "64": latency[1]},
    }


def test_all_three_models_with_speedups_and_int8_accuracy(page: Any) -> None:
    inference = {
        "runtime": "onnxruntime 1.20.0 CPU",
        "threads": 1,
        "batches": [1, 64],
        "dense": _model(266200, 266610, 1_066_000, (0.05, 1.6)),
        "compact": _model(26620, 26700, 107_000, (0.02, 0.4)),
        "compact_int8": _model(None, None, 30_000, (0.025, 0.3)),
        "speedup": {"1": 2.5, "64": 4.0},
        "int8_speedup": {"1": 2.0, "64": 5.333},
        "mac_reduction": 10.0,
    }
    compact = {"max_abs_diff": 3.1e-6, "int8": {"test_accuracy": 0.9712, "float_test_accuracy": 0.9725}}
    seen = _render(page, inference=inference, compact=compact)
    assert seen["visible"] and seen["rows"] == ["dense", "compact", "int8"]
    assert seen["cells"][1:6] == ["266,200", "266,610", "1.0 MiB", "0.050", "1.6"]
    assert seen["cells"][7:9] == ["26,620", "26,700"]
    assert seen["cells"][13:15] == ["—", "—"]  # int8: an ONNX-only model, no torch counts
    notes = " ".join(seen["notes"])
    assert "Compact vs dense: 10.0× fewer MACs; speed-up batch 1 2.50×, batch 64 4.00×." in notes
    assert "int8 vs dense: speed-up batch 1 2.00×, batch 64 5.33×." in notes
    assert "max |Δlogit| 3.1e-6" in notes
    assert "int8 test accuracy 97.12% (float 97.25%)" in notes


def test_skipped_compaction_shows_the_reason_as_text(page: Any) -> None:
    reason = "the model returns tuple, not a tensor of logits <img src=x onerror=alert(1)>"
    inference = {"runtime": "onnxruntime 1.20.0 CPU", "threads": 1, "batches": [1, 64]}
    inference["dense"] = _model(266200, 266610, 1_066_000, (0.05, 1.6))
    seen = _render(page, inference=inference, compact={"skipped": reason})
    assert seen["visible"] and seen["rows"] == ["dense"]
    assert f"No compact model: {reason}" in seen["notes"]
    assert seen["images"] == 0


def test_compaction_that_kept_channels_whole_says_why(page: Any) -> None:
    reason = "dependency graph failed: ZeroDivisionError <img src=x onerror=alert(1)>"
    inference = {"runtime": "onnxruntime 1.20.0 CPU", "threads": 1, "batches": [1, 64]}
    inference["dense"] = _model(266200, 266610, 1_066_000, (0.05, 1.6))
    compact = {"max_abs_diff": 0.0, "channels_skipped": reason, "selected_inputs_skipped": None}
    seen = _render(page, inference=inference, compact=compact)
    assert f"Units and channels kept whole: {reason}" in seen["notes"]
    assert not any("Input columns kept whole" in note for note in seen["notes"])
    assert seen["images"] == 0


def test_skipped_measurement_shows_the_reason(page: Any) -> None:
    inference = {"runtime": "onnxruntime 1.20.0 CPU", "threads": 1, "batches": [1, 64]}
    inference["skipped"] = "no ONNX model was exported"
    compact = {"max_abs_diff": 0.0, "int8": {"skipped": "integer inputs (token ids): <b>static</b>"}}
    seen = _render(page, inference=inference, compact=compact)
    assert seen["visible"] and seen["rows"] == []
    assert "Not measured: no ONNX model was exported" in seen["notes"]
    assert "No int8 model: integer inputs (token ids): <b>static</b>" in seen["notes"]
    assert seen["images"] == 0 and page.locator("#job-inference b").count() == 0


def test_a_job_without_inference_numbers_hides_the_panel(page: Any) -> None:
    assert not _render(page)["visible"]


def test_a_finished_jobs_epoch_events_are_not_charted_twice(page: Any) -> None:
    """Opening a finished job draws its metrics' history, then lists its events: the charts keep one point per epoch."""
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0 / e, "compression_ratio": 1.0} for e in (1, 2, 3)]
    page.evaluate("() => { state.history = []; state.historyFinal = false; state.events = []; }")
    job = chart_job("succeeded", history, 5.0)
    page.evaluate("job => { show('job'); renderJob(job); }", job)
    for epoch in (1, 2, 3):
        event = {"id": f"evt-final-{epoch}", "created_at": "2026-01-01T00:00:02Z", "type": "metrics", "level": "info",
                 "message": f"epoch {epoch}", "data": history[epoch - 1]}  # fmt: skip
        page.evaluate("evt => addEvent(evt)", event)
    assert page.locator("#chart-cr svg circle").count() == 3
