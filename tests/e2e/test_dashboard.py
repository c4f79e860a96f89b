"""The web dashboard in a real browser: Playwright drives Debian's chromium against a live ``dwf serve``.

Sign in with the key ``dwf serve`` wrote to config.json, submit a small job through the form (zoo LeNet-300-100,
a few hundred MNIST images), watch it reach ``succeeded`` over the server-sent events stream, check the charts,
download an artifact and take a screenshot of the job page (into tmp; ``DWF_SCREENSHOT_DIR`` or
scripts/screenshot_dashboard.py writes it into docs/img instead).

chromium comes from apt (scripts/test.sh installs it), never from ``playwright install``; without it (or the
playwright package) the browser test skips locally and fails on CI (CI=true).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_embedded import Server
from tests.service_helpers import mnist_npz

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "api" / "static"
CHROMIUM = os.environ.get("DWF_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The job submitted through the form: small enough for ~30 s on 2 CPU cores. scripts/screenshot_dashboard.py
# asks for a longer run (and a frontier) so the committed screenshot has curves worth looking at.
N_TRAIN = int(os.environ.get("DWF_DASHBOARD_TRAIN", "400"))
EPOCHS = int(os.environ.get("DWF_DASHBOARD_EPOCHS", "3"))
FRONTIER = os.environ.get("DWF_DASHBOARD_FRONTIER", "")  # compression ratios, e.g. "5, 10, 20"
pytestmark = pytest.mark.slow


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def fulfill_static(route: Any, path: str) -> bool:
    """Answer a Playwright route for ``/`` (index.html) or a /static file from the tree; False for any other path."""
    if path == "/":
        route.fulfill(body=(STATIC / "index.html").read_text(), content_type="text/html")
        return True
    if path.startswith("/static/") and (STATIC / path.removeprefix("/static/")).is_file():
        kind = "text/css" if path.endswith(".css") else "text/javascript"
        route.fulfill(body=(STATIC / path.removeprefix("/static/")).read_text(), content_type=kind)
        return True
    return False


@contextmanager
def browser_page(
    serve: Callable[[Any], None] | None = None, *, origin: str = "", api_key: str | None = None
) -> Iterator[tuple[Any, list[str]]]:
    """A chromium page (1280×900) and the list its page errors go to; with ``api_key`` signed in through
    sessionStorage, with ``serve`` every request below ``origin`` answered by it. The browser closes after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            if api_key is not None:
                page.add_init_script(f"sessionStorage.setItem('dwf_api_key', {json.dumps(api_key)})")
            if serve is not None:
                page.route(f"{origin}/**", serve)
            yield page, errors
        finally:
            browser.close()


def _require_browser() -> None:
    """Skip locally, fail on CI, when chromium or the playwright package is missing."""
    missing = []
    if shutil.which(CHROMIUM) is None:
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        if _on_ci():
            pytest.fail(f"missing on CI: {', '.join(missing)}", pytrace=False)
        pytest.skip(f"not installed: {', '.join(missing)}")


# ------------------------------------------------------------------------------------------ without a browser


def test_dashboard_zoo_names_match_dwf_core() -> None:
    """The form's model-name suggestions are the zoo's names (the API process does not import torch to list them)."""
    from dwf_core.intake import list_timm_models, list_zoo

    html = (STATIC / "index.html").read_text()
    datalist = re.search(r'<datalist id="zoo-names">(.*?)</datalist>', html, re.S)
    assert datalist is not None
    names = re.findall(r'<option value="([^"]+)">', datalist.group(1))
    assert [n for n in names if not n.startswith(("torchvision:", "timm:"))] == list_zoo()
    # the timm suggestions are timm architectures (any other timm:NAME may be typed)
    timm_names = [n.removeprefix("timm:") for n in names if n.startswith("timm:")]
    assert timm_names and set(timm_names) <= set(list_timm_models())


def test_dashboard_is_self_hosted() -> None:
    """No CDN: every script and stylesheet is a local /static file that exists."""
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert sorted(refs) == ["/static/app.js", "/static/charts.js", "/static/style.css", "/static/sweeps.js"]
    assert all((STATIC / ref.removeprefix("/static/")).is_file() for ref in refs)
    for path in STATIC.iterdir():
        assert "http://" not in path.read_text().replace("http://www.w3.org/2000/svg", ""), path
        assert "https://" not in path.read_text(), path


# ------------------------------------------------------------------------------------------------ in chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A ``dwf serve`` of its own (the dashboard is served by the API at /)."""
    _require_browser()
    srv = Server(tmp_path_factory.mktemp("dash") / "data")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def _api_key(server: Server) -> str:
    key: str = json.loads((server.data_dir / "config.json").read_text())["api_key"]
    return key


def test_dashboard_page_and_assets_are_served(server: Server) -> None:
    index = httpx.get(f"{server.url}/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "<title>dwf dashboard</title>" in index.text
    for name, kind in (
        ("app.js", "javascript"),
        ("charts.js", "javascript"),
        ("sweeps.js", "javascript"),
        ("style.css", "text/css"),
    ):
        resp = httpx.get(f"{server.url}/static/{name}")
        assert resp.status_code == 200 and kind in resp.headers["content-type"], name
        assert resp.content == (STATIC / name).read_bytes()
    # The API itself still answers its JSON envelope for unknown paths and needs the key.
    assert httpx.get(f"{server.url}/v1/jobs").json()["error"]["code"] == "missing_api_key"


def run_dashboard_flow(server: Server, dataset: Path, downloads: Path, screenshot: Path) -> dict[str, Any]:
    """Sign in, submit a job with the form, follow it to the end, download metrics.json, screenshot the job page.

    Returns the job (from the API) and what the browser saw; shared with scripts/screenshot_dashboard.py.
    """
    from playwright.sync_api import expect, sync_playwright

    seen: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(server.url + "/")

            # A wrong key is refused; the right one signs in and lands on the job list.
            expect(page.locator("#view-signin")).to_be_visible()
            page.fill("#api-key", "dwf_not-a-key")
            page.click("#signin-form button[type=submit]")
            expect(page.locator("#flash")).to_contain_text("not valid")
            page.fill("#api-key", _api_key(server))
            page.click("#signin-form button[type=submit]")
            expect(page.locator("#view-jobs")).to_be_visible()
            assert page.evaluate("sessionStorage.getItem('dwf_api_key')") == _api_key(server)
            console_errors.clear()  # chromium logs the refused key's 401 as a console error

            # Submit: zoo model, uploaded dataset, depth 2, target sparsity 80 %, 3 epochs (by default), 1 dense first.
            page.click("a.button[href='#/new']")
            expect(page.locator("#view-new")).to_be_visible()
            page.fill("input[name=model_name]", "lenet_300_100")
            page.set_input_files("input[name=dataset_file]", str(dataset))
            page.fill("input[name=depth]", "2")
            page.fill("input[name=epochs]", str(EPOCHS))
            page.fill("input[name=batch_size]", "64")
            page.check("input[name=strength][value=target]")
            page.fill("input[name=target_sparsity]", "80")
            page.fill("input[name=frontier]", FRONTIER)
            page.fill("input[name=dense_epochs]", "1")  # one epoch of plain training first, then DWF from it
            page.fill("input[name=distill]", "0.3")  # and distillation from that dense model at weight 0.3
            page.fill("input[name=augment]", "shift:1")  # training images moved by up to one pixel
            page.select_option("select[name=precision]", "bf16")  # bf16 autocast on the CPU worker
            page.click("#submit-job")
            page.wait_for_url(re.compile(r".*#/jobs/job-[0-9a-z]+$"), timeout=30_000)
            job_id = page.url.rsplit("/", 1)[-1]
            seen["job_id"] = job_id
            expect(page.locator("#job-title")).to_have_text(job_id)

            # Live: the events stream shows epochs as they finish, then the job ends.
            expect(page.locator("#events li.metrics").first).to_be_visible(timeout=120_000)
            seen["live_during_run"] = page.locator("#live").is_visible()
            expect(page.locator("#job-status")).to_have_text("succeeded", timeout=180_000)
            # One line per epoch (training, then any fine-tuning epochs after the collapse), as the API lists them.
            api_events = server.client.get(f"/v1/jobs/{job_id}/events?limit=100").json()["data"]
            n_metrics = sum(e["type"] == "metrics" for e in api_events)
            assert n_metrics >= EPOCHS
            expect(page.locator("#events li.metrics")).to_have_count(n_metrics)
            expect(page.locator("#job-progress-text")).to_contain_text("100%")
            expect(page.locator("#job-cancel")).to_be_hidden()

            # Charts drawn from the job's metrics: a point per epoch on each line, one bar per layer.
            for chart in ("#chart-loss", "#chart-accuracy", "#chart-cr"):
                expect(page.locator(f"{chart} svg path.series").first).to_be_visible()
                assert page.locator(f"{chart} svg circle").count() >= EPOCHS, chart
            expect(page.locator("#chart-layers svg rect.bar")).to_have_count(3)
            if FRONTIER:
                expect(page.locator("#chart-frontier svg circle.dot").first).to_be_visible()
            else:
                expect(page.locator("#chart-frontier")).to_be_hidden()
            seen["cards"] = page.locator("#job-cards").inner_text()

            # Download buttons for every artifact; metrics.json comes down intact (a Bearer fetch → blob).
            expect(page.locator("#artifacts button[data-artifact='report.html']")).to_be_visible()
            seen["artifact_buttons"] = page.locator("#artifacts button[data-artifact]").evaluate_all(
                "els => els.map(e => e.dataset.artifact)"
            )
            with page.expect_download() as info:
                page.click("#artifacts button[data-artifact='metrics.json']")
            download = info.value
            assert download.suggested_filename == "metrics.json"
            target = downloads / "metrics.json"
            download.save_as(str(target))
            seen["download"] = target

            # report.html opens in a new tab (a blob: page, fetched with the key), self-contained with its plots.
            with page.context.expect_page() as tab_info:
                page.click("#artifacts li:has(button[data-artifact='report.html']) button.secondary")
            tab = tab_info.value
            expect(tab).to_have_title(re.compile(r"^DWF report: lenet_300_100$"), timeout=30_000)
            seen["report_images"] = tab.locator("img[src^='data:image/png;base64,']").count()
            tab.close()

            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(screenshot), full_page=True)

            # The list shows the job as succeeded.
            page.click("nav a[data-nav=jobs]")
            expect(page.locator(f"tr[data-job='{job_id}'] .badge")).to_have_text("succeeded")
            seen["console_errors"] = console_errors
        finally:
            browser.close()
    seen["job"] = server.client.get(f"/v1/jobs/{seen['job_id']}").json()
    return seen


def test_dashboard_submit_watch_download(server: Server, tmp_path: Path) -> None:
    dataset = mnist_npz(tmp_path / "mnist-small.npz", N_TRAIN, 200)
    shots = Path(os.environ.get("DWF_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    screenshot = shots / "dashboard-job.png"
    seen = run_dashboard_flow(server, dataset, tmp_path, screenshot)

    job = seen["job"]
    assert job["status"] == "succeeded", job
    assert job["model"]["name"] == "lenet_300_100"
    assert (job["method"]["depth"], job["method"]["epochs"], job["method"]["target_sparsity"]) == (2, EPOCHS, 0.8)
    assert job["method"]["dense_epochs"] == 1
    assert job["method"]["distill"] == 0.3 and job["metrics"]["distill"]["alpha"] == 0.3
    assert job["method"]["augment"] == "shift:1" and job["metrics"]["config"]["augment"] == "shift:1"
    assert job["method"]["precision"] == "bf16" and job["metrics"]["precision"] == "bf16"
    assert seen["live_during_run"], "the page never showed the live events stream"
    assert f"{100 * job['metrics']['sparsity']:.2f}%" in seen["cards"]
    assert seen["console_errors"] == []

    artifacts = server.client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
    assert sorted(seen["artifact_buttons"]) == sorted(a["name"] for a in artifacts)
    assert {"metrics.json", "report.html", "model.sparse.safetensors"} <= set(seen["artifact_buttons"])
    metrics_art = next(a for a in artifacts if a["name"] == "metrics.json")
    downloaded = Path(seen["download"]).read_bytes()
    assert hashlib.sha256(downloaded).hexdigest() == metrics_art["sha256"]
    assert json.loads(downloaded)["test_accuracy"] == job["metrics"]["test_accuracy"]
    assert json.loads(downloaded)["dense_start"]["epochs"] == 1

    assert seen["report_images"] == 5
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
