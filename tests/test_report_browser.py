"""report.html in a real browser: headless Debian chromium (Playwright) shows every figure.

The page is opened from disk (file://, no server) with the network off; Playwright never
downloads a browser here: it launches /usr/bin/chromium (`.ci/run` installs it when absent).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib", reason="the viz extra is not installed: pip install '.[dev]'")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install '.[dev]'"
)

from mnistcnn.report.figures import SIZES  # noqa: E402
from mnistcnn.report.page import FIGURES, write_report  # noqa: E402


@pytest.fixture(scope="module")
def report_page(tiny_run: dict, data_dir: Path, tmp_path_factory: Any) -> Path:
    out = tmp_path_factory.mktemp("html-report")
    return write_report(tiny_run["run_dir"], out, data_dir)["html"]


@pytest.mark.slow
def test_report_page_shows_every_figure(
    browser: Any, report_page: Path, tiny_run: dict, tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda request: errors.append(f"failed: {request.url[:80]}"))
    page.goto(report_page.as_uri(), wait_until="load")
    images = page.evaluate(
        """() => [...document.querySelectorAll('figure')].map(f => {
            const img = f.querySelector('img');
            const box = img.getBoundingClientRect();
            return {id: f.id, complete: img.complete, w: img.naturalWidth,
                    h: img.naturalHeight, shown: box.width, caption: f.innerText};
        })"""
    )
    assert [i["id"] for i in images] == list(FIGURES)
    for image in images:
        assert image["complete"], image["id"]
        assert (image["w"], image["h"]) == SIZES[image["id"]], image["id"]
        assert image["shown"] > 500, f"{image['id']} is drawn {image['shown']} px wide"
        assert image["caption"].strip() == FIGURES[image["id"]]
    for i in range(len(FIGURES)):
        figure = page.locator("figure img").nth(i)
        figure.scroll_into_view_if_needed()
        assert figure.is_visible()
    text = page.inner_text("body")
    assert f"{100 * tiny_run['test_accuracy']:.2f} %" in text
    assert "Config" in text and "OneCycleLR" not in text and "Adam" in text  # tiny's recipe
    shots = Path(os.environ.get("MNISTCNN_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / "report-page.png"
    page.screenshot(path=str(shot), full_page=True)
    context.close()
    assert not errors, errors
    assert shot.stat().st_size > 50_000
