"""End to end in a real browser: Playwright drives Debian's Chromium against ``python app.py`` on
the embedded model. Upload an example, ask, and check that both answers, the heatmap and the
charts appear; saves results/e2e/screenshot.png. Install the browser with ``.ci/install-browser``."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("V2DROP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SHOTS = ROOT / "results" / "e2e"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (run .ci/install-browser)")
if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
    pytest.skip(f"Chromium not found at {CHROMIUM} (run .ci/install-browser: apt-get install chromium)",
                allow_module_level=True)

from app_server import AppServer  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = AppServer(log_path=tmp_path_factory.mktemp("e2e") / "app.log")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1440, "height": 1300})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(server.url)
        yield page
        browser.close()


def test_upload_ask_and_see_both_answers_heatmap_and_charts(page, server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_selector("#question textarea")
    example = ROOT / "assets" / "examples" / "shapes_0_color.png"
    page.locator("#image-upload input[type=file]").set_input_files(str(example))
    page.wait_for_selector("#preview img")
    page.locator("#question textarea").fill("what color is the star ?")
    page.locator("#send").click()
    page.wait_for_function("() => document.querySelector('#notice')?.innerText.includes('Done with')",
                           timeout=120_000)
    for pane in ("#chat-full", "#chat-drop"):  # the question and an answer bubble in both panes
        page.wait_for_function(f"() => document.querySelectorAll('{pane} .message').length >= 2")
        text = page.locator(pane).inner_text()
        assert "what color is the star ?" in text, (pane, text)
    for image in ("#heatmap img", "#kept-overlay img"):  # overlays drawn and loaded
        page.wait_for_function(f"() => (document.querySelector('{image}')?.naturalWidth || 0) > 100")
    page.screenshot(path=str(SHOTS / "screenshot.png"), full_page=True)

    page.get_by_role("tab", name="Performance").click()
    chart = page.locator("#perf-chart .js-plotly-plot, #perf-chart .plot-container")
    chart.first.wait_for(timeout=60_000)
    assert page.locator("#alive-chart .js-plotly-plot, #alive-chart .plot-container").count() >= 1
    page.screenshot(path=str(SHOTS / "screenshot-performance.png"), full_page=True)
    assert "Traceback" not in page.content()

    # the example gallery fills the image and the question, and starts a new chat
    page.locator("#gallery img").nth(1).click()
    page.wait_for_function("() => document.querySelector('#question textarea')?.value.includes('how many squares')")
    page.wait_for_function("() => document.querySelector('#notice')?.innerText.includes('New image')")
