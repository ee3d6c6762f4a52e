"""The page in a real browser: headless Debian chromium, driven by Playwright, draws on the canvas.

The app runs under a real uvicorn in a thread, on a free loopback port. Playwright never
downloads a browser here: it launches /usr/bin/chromium (`.ci/run` installs it when absent).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install '.[dev]'")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install '.[dev]'"
)

from mnistcnn.checkpoint import load_model  # noqa: E402
from mnistcnn.serve.app import bind, create_app, server, url  # noqa: E402

# A 7 on the 280-px canvas, as fractions of its side: the top bar, then the long diagonal.
SEVEN = [[(0.25, 0.22), (0.75, 0.22)], [(0.75, 0.22), (0.42, 0.85)]]


@pytest.fixture(scope="module")
def live_url(digit_model_run: dict) -> Iterator[str]:
    """The app on a real uvicorn server, on a free loopback port, in a thread."""
    app = create_app(load_model(digit_model_run["path"]), str(digit_model_run["path"]))
    sock = bind("127.0.0.1", 0)
    srv = server(app)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield url(sock)
    srv.should_exit = True
    thread.join(15)
    sock.close()


@pytest.fixture
def page(browser: Any, live_url: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 900, "height": 720})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_url)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _stroke(page: Any, points: list[tuple[float, float]], release: bool = True) -> None:
    """Drag the mouse through `points` (fractions of the canvas) with the button down."""
    box = page.locator("#canvas").bounding_box()

    def at(p: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + p[0] * box["width"], box["y"] + p[1] * box["height"]

    page.mouse.move(*at(points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*at(point), steps=12)
    if release:
        page.mouse.up()


def _screenshot_dir(tmp_path: Path) -> Path:
    # Set MNISTCNN_SCREENSHOTS to keep the pictures somewhere to look at.
    out = Path(os.environ.get("MNISTCNN_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_drawing_a_seven_shows_the_prediction_live(page: Any, tmp_path: Path) -> None:
    expect = sync_api.expect
    label = page.locator("#label")
    expect(label).to_have_attribute("data-state", "empty")  # the "no digit" state at start
    expect(page.locator("#model-info")).to_contain_text("parameters")

    _stroke(page, SEVEN[0])
    # The second stroke is still being drawn (button held) when the answer must appear.
    _stroke(page, SEVEN[1], release=False)
    expect(label).to_have_text("7", timeout=15_000)
    page.mouse.up()

    # The answer to the whole drawing, once no request is waiting or in flight.
    expect(page.locator("body")).to_have_attribute("data-busy", "false", timeout=15_000)
    expect(label).to_have_text("7")
    expect(page.locator("#bars li.top")).to_have_attribute("data-digit", "7")
    expect(page.locator("#seen")).to_be_visible()
    assert page.locator("#seen").get_attribute("src").startswith("data:image/png;base64,")
    shot = _screenshot_dir(tmp_path) / "serve-seven.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    page.locator("#clear").click()
    expect(label).to_have_attribute("data-state", "empty")
    expect(page.locator("#status")).to_contain_text("No digit")
    expect(page.locator("#seen")).to_be_hidden()


def test_uploading_a_photo(page: Any, tmp_path: Path, mnist_test: Any, draw: Callable) -> None:
    expect = sync_api.expect
    index = int((mnist_test.labels == 0).nonzero()[0][0])
    photo = tmp_path / "zero.jpg"
    draw(mnist_test.images[index].numpy(), photo, canvas=400, height=240, at=(80, 90), style="JPEG")
    page.locator("#file").set_input_files(str(photo))
    expect(page.locator("#label")).to_have_text("0", timeout=15_000)
    expect(page.locator("#status")).to_contain_text("zero.jpg")
    expect(page.locator("#seen")).to_be_visible()
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "serve-photo.png"))
