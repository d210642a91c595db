"""What matters in a real browser (Playwright + Debian's Chromium, like test_browser.py): a gallery
scene brings its ground truth into the chart, a brush stroke in the editor and a box clicked on the
picture replace it, clearing brings it back, and a picked baseline adds a line. Saves
results/e2e/screenshot-what-matters.png."""

import pytest

from chromium import ARGS, CHROMIUM, ROOT, SHOTS
from chromium import sync_api as _sync_api

sync_api = _sync_api()

from app_server import AppServer  # noqa: E402

LINES = "() => document.querySelectorAll('#matters-chart .scatterlayer .trace').length"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    server = AppServer(log_path=tmp_path_factory.mktemp("e2e-matters") / "app.log")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1440, "height": 1400})
            page.set_default_timeout(60_000)
            page.goto(server.url)
            yield page
            browser.close()
    finally:
        server.stop()


def _note_has(page, text: str) -> None:
    page.wait_for_function(f"() => document.querySelector('#matters-note')?.innerText.includes({text!r})")


def test_truth_marks_and_a_baseline_in_the_what_matters_tab(page):
    page.wait_for_selector("#question textarea")
    page.locator("#gallery img").nth(0).click()
    page.wait_for_function("() => document.querySelector('#image-info')?.innerText.includes('generated scene')")
    page.locator("#send").click()
    page.wait_for_function("() => document.querySelector('#notice')?.innerText.includes('Done with')",
                           timeout=120_000)
    page.get_by_role("tab", name="What matters").click()
    _note_has(page, "Ground truth")
    page.wait_for_function(f"() => ({LINES})() === 2")

    canvas = page.locator("#mark-editor canvas").first  # a brush stroke across the picture's middle
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 40, y)
    page.mouse.down()
    for i in range(20):
        page.mouse.move(x - 40 + 4 * i, y, steps=2)
    page.mouse.up()
    _note_has(page, "Hand-marked")
    page.wait_for_function("() => document.querySelector('#matters-chart')?.innerText.includes('Hand-marked')")

    page.get_by_role("button", name="Clear the mark").click()
    _note_has(page, "Ground truth")
    picture = page.locator("#preview img")  # a box: two opposite corners clicked on the picture
    picture.click(position={"x": 60, "y": 60})
    _note_has(page, "First corner")
    picture.click(position={"x": 150, "y": 150})
    _note_has(page, "Hand-marked")

    page.locator("#baseline input").click()
    page.get_by_role("option", name="random").click()
    _note_has(page, "random baseline: one prefill")
    page.wait_for_function(f"() => ({LINES})() === 3")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#matters-chart").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "screenshot-what-matters.png"), full_page=True)
    assert "Traceback" not in page.content()
