"""End to end in a real browser: Playwright drives Debian's Chromium against ``python app.py`` on
the embedded model. Upload an example, ask, and check that both answers, the heatmap and the
charts appear; saves results/e2e/screenshot.png. Install the browser with ``.ci/install-browser``."""

import pytest

from chromium import ARGS, CHROMIUM, ROOT, SHOTS
from chromium import sync_api as _sync_api

sync_api = _sync_api()

from app_server import AppServer  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the video test types a tiny model's local folder: the operator allows folders here
    app = AppServer(log_path=tmp_path_factory.mktemp("e2e") / "app.log", env={"V2DROP_ALLOW_LOCAL_FOLDERS": "1"})
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

    # the teaching tab: the embedded model's drop-layer sweep, its figure and its numbers in words
    page.get_by_role("tab", name="How it works").click()
    page.locator("#sweep-chart .js-plotly-plot, #sweep-chart .plot-container").first.wait_for(timeout=60_000)
    assert "first drop at layer 1" in page.locator("#sweep-story").inner_text()

    # the example gallery fills the image and the question, and starts a new chat
    page.locator("#gallery img").nth(1).click()
    page.wait_for_function("() => document.querySelector('#question textarea')?.value.includes('how many squares')")
    page.wait_for_function("() => document.querySelector('#notice')?.innerText.includes('New image')")


def _notice_has(page, text: str, timeout: int = 60_000) -> None:
    page.wait_for_function(f"() => document.querySelector('#notice')?.innerText.includes({text!r})", timeout=timeout)


def test_video_tab_refuses_image_models_then_runs_a_video_model(page, server, tmp_path_factory):
    """The Video tab with the embedded model (images only) says so and names the video models; with a
    tiny LLaVA-OneVision typed as a local folder, both answers, the frame strips and the timeline appear."""
    import tiny_models

    folder = tmp_path_factory.mktemp("tiny-video")
    tiny_models.build("llava_onevision", folder)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(server.url)  # a fresh session
    page.wait_for_selector("#question textarea")
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-upload input[type=file]").set_input_files(str(ROOT / "assets" / "videos" / "moving_shapes.mp4"))
    _notice_has(page, "takes no video")
    assert "LLaVA-OneVision, Qwen2-VL and Qwen2.5-VL" in page.locator("#notice").inner_text()
    page.wait_for_function("() => (document.querySelector('#video-preview img')?.naturalWidth || 0) > 300")
    page.locator("#question textarea").fill("which way does the red circle move ?")
    page.locator("#send").click()
    _notice_has(page, "takes no video")  # asking is refused with the same clear message

    model_box = page.locator("#model-id input")
    model_box.fill(str(folder / "llava_onevision"))
    model_box.press("Enter")
    page.get_by_role("button", name="Load model").click()
    _notice_has(page, "Loaded", timeout=120_000)
    page.locator("#schedule textarea").fill("2:0.5,4:0.25")
    page.wait_for_function("() => !document.querySelector('#schedule-info')?.innerText.includes('cannot run')")
    page.locator("#question textarea").fill("which way does the red circle move ?")
    page.locator("#send").click()
    _notice_has(page, "Done with", timeout=180_000)
    for pane in ("#chat-full", "#chat-drop"):
        page.wait_for_function(f"() => document.querySelectorAll('{pane} .message').length >= 2")
        assert "which way does the red circle move ?" in page.locator(pane).inner_text()
    for image in ("#kept-overlay img", "#heatmap img"):  # frame strips: 2 rows of 4 tiles
        page.wait_for_function(f"() => (document.querySelector('{image}')?.naturalWidth || 0) > 600")
    page.locator("#frame-timeline .js-plotly-plot, #frame-timeline .plot-container").first.wait_for(timeout=60_000)
    page.locator("#kept-overlay").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "screenshot-video.png"), full_page=True)
    assert "Traceback" not in page.content()
