"""The job page of a continued job in chromium: its settings table links to the parent job (from the static files
alone, as tests/e2e/test_dashboard_inference.py draws its panels)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.test_dashboard_charts import _job as chart_job
from tests.e2e.test_dashboard_inference import page  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


def test_a_continued_job_links_to_its_parent(page: Any) -> None:  # noqa: F811
    child = {**chart_job("succeeded", [], 5.0), "parent_job_id": "job-01parent"}
    page.evaluate("job => { show('job'); renderJob(job); }", child)
    link = page.locator("#job-settings #job-parent")
    assert link.text_content() == "job-01parent" and link.get_attribute("href") == "#/jobs/job-01parent"
    assert page.locator("#job-settings tr").first.locator("th").text_content() == "continues"
    page.evaluate("job => { show('job'); renderJob(job); }", chart_job("succeeded", [], 5.0))
    assert page.locator("#job-parent").count() == 0
