"""Issue 25 in a real browser, at desktop (1280 × 800) and phone (390 × 844) sizes: the first
minute reads at a glance. Playwright drives Debian's Chromium against ``python app.py`` on the
embedded model (like test_browser.py).

- a phone: every gallery example and every tab is in view without a sideways scroll; after Send
  both answers are in view; no chart title is clipped;
- pictures: no label or button covers an overlay's top row; no empty video timeline on an image run;
- bugs seen: a question with ``<image>`` is refused with the token shown as text; a brush mark, then
  Send with other drop layers, gives no error and keeps the mark; a hand-edited schedule puts
  "custom" in the Preset box; a corrupt image or video is explained under its upload box; a
  refused question leaves no chart of the previous run.

Saves results/e2e/glance-{desktop,phone}-*.png.
"""

import pytest

from chromium import ARGS, CHROMIUM, SHOTS
from chromium import sync_api as _sync_api

sync_api = _sync_api()

from app_server import AppServer  # noqa: E402

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
TABS = ("Patches per layer", "What matters", "Performance", "How it works")
DONE = "() => document.querySelector('#notice')?.innerText.includes('Done with')"
# an element's box within the viewport, in CSS pixels (after scrolling it into view where asked)
IN_VIEW = """(el) => { const r = el.getBoundingClientRect();
  return r.width > 0 && r.left >= -1 && r.right <= innerWidth + 1 && r.top >= -1 && r.bottom <= innerHeight + 1; }"""
# what lies over the top of a picture: its label and its buttons must end above the picture (one layout)
COVERS = """(root) => { const top = root.querySelector('img').getBoundingClientRect().top; const out = [];
  root.querySelectorAll('label[data-testid=block-label], .icon-button-wrapper').forEach(c => {
    const r = c.getBoundingClientRect(); if (r.height && r.bottom > top + 1) out.push([c.className, r.bottom, top]); });
  return out; }"""
# the text boxes of a plotly figure's titles (figure title and subplot titles) against the figure's box
CLIPPED_TITLES = """(root) => { const svg = root.querySelector('.main-svg'); if (!svg) return ['no figure'];
  const box = svg.getBoundingClientRect(); const out = [];
  root.querySelectorAll('.gtitle, .annotation-text').forEach(t => { const r = t.getBoundingClientRect();
    if (r.width && (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1))
      out.push(t.textContent); });
  return out; }"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = AppServer(log_path=tmp_path_factory.mktemp("e2e-glance") / "app.log")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def browser(server):
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


def _page(browser, server, size: str):
    width, height = SIZES[size]
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)
    page.goto(server.url)
    page.wait_for_selector("#question textarea")
    page.locator("#gallery img").first.wait_for()
    return page


def _in_view(page, selector: str) -> bool:
    return page.locator(selector).first.evaluate(IN_VIEW)


def _shot(page, size: str, name: str, full: bool = False) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"glance-{size}-{name}.png"), full_page=full)


def _ask_first_example(page) -> None:
    page.locator("#gallery img").nth(0).click()
    page.wait_for_function("() => document.querySelector('#question textarea')?.value.includes('star')")
    page.wait_for_function("() => document.querySelector('#image-info')?.innerText.includes('vision tokens')")
    page.locator("#send").click()
    page.wait_for_function(DONE, timeout=240_000)


@pytest.mark.parametrize("size", list(SIZES))
def test_the_first_minute_at_a_glance(browser, server, size):
    page = _page(browser, server, size)
    width = SIZES[size][0]
    assert page.evaluate("document.documentElement.scrollWidth") <= width   # no sideways scroll
    thumbs = page.locator("#gallery img")
    assert thumbs.count() >= 7
    for i in range(thumbs.count()):  # every example in view once scrolled to, none in a hidden inner scroll
        thumbs.nth(i).scroll_into_view_if_needed()
        assert thumbs.nth(i).evaluate(IN_VIEW), f"gallery example {i} is out of view at {size}"
    grid = page.locator("#gallery .grid-wrap").first
    assert grid.evaluate("(el) => el.scrollHeight <= el.clientHeight + 1 && el.scrollWidth <= el.clientWidth + 1")
    for name in TABS:  # every tab is a visible button, none behind a "more" menu
        tab = page.get_by_role("tab", name=name)
        tab.scroll_into_view_if_needed()
        assert tab.is_visible() and tab.evaluate(IN_VIEW), f"tab {name!r} not in view at {size}"

    _ask_first_example(page)
    for pane in ("#chat-full", "#chat-drop"):  # both answers in view right after Send
        page.wait_for_function(f"() => document.querySelectorAll('{pane} .message').length >= 2")
        assert page.locator(f"{pane} .message").last.evaluate(IN_VIEW), f"{pane}'s answer is out of view at {size}"
    _shot(page, size, "after-send")

    for overlay in ("#kept-overlay", "#heatmap", "#dropped-overlay"):  # nothing over a picture's top row
        page.wait_for_function(f"() => (document.querySelector('{overlay} img')?.naturalWidth || 0) > 100")
        assert page.locator(overlay).evaluate(COVERS) == [], f"{overlay}'s top row is covered at {size}"
    assert not page.locator("#frame-timeline").is_visible()  # an image run: no empty video timeline
    page.locator("#kept-overlay").scroll_into_view_if_needed()
    _shot(page, size, "overlays")

    for tab, charts in (("Performance", ("#perf-chart", "#alive-chart")), ("How it works", ("#sweep-chart",))):
        page.get_by_role("tab", name=tab).click()
        for chart in charts:
            page.locator(f"{chart} .main-svg").first.wait_for(timeout=60_000)
            page.locator(chart).scroll_into_view_if_needed()
            assert page.locator(chart).evaluate(CLIPPED_TITLES) == [], f"{chart} titles clipped at {size}"
        _shot(page, size, tab.lower().replace(" ", "-"))
    assert "Traceback" not in page.content()
    page.close()


def _brush(page, dy: float = 0) -> None:
    """A stroke across the middle of the mark editor's picture (``dy`` pixels lower)."""
    canvas = page.locator("#mark-editor canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2 + dy
    page.mouse.move(x - 40, y)
    page.mouse.down()
    for i in range(20):
        page.mouse.move(x - 40 + 4 * i, y, steps=2)
    page.mouse.up()


@pytest.mark.parametrize("size", list(SIZES))
def test_the_bugs_seen_stay_fixed(browser, server, size, tmp_path):
    page = _page(browser, server, size)
    start = len(server.log_text_full())
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "not in the list" in m.text else None)
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a picture" * 20)
    page.locator("#image-upload input[type=file]").set_input_files(str(corrupt))
    page.wait_for_function("() => document.querySelector('#image-info')?.innerText.includes('❌')")
    page.locator("#image-info").scroll_into_view_if_needed()
    assert _in_view(page, "#image-info") and _in_view(page, "#image-upload")  # the message beside the box

    _ask_first_example(page)
    page.get_by_role("tab", name="What matters").click()
    schedule = page.locator("#schedule textarea")
    schedule.fill("3:0.5,5:0.5")  # other drop layers than the default's
    page.wait_for_function("() => document.querySelector('#preset input')?.value.startsWith('custom')")
    page.locator("#question textarea").fill("what color is the star ?")
    # brush, Send, and brush on while the run goes: the strokes' events carry the previous run's drop
    # layer and are read after the run changed the picker's choices (Gradio refused them before)
    _brush(page)
    page.locator("#send").click()
    _brush(page, 20)
    page.wait_for_timeout(300)
    _brush(page, 60)
    page.wait_for_function("() => document.querySelector('#notice')?.innerText.includes('Done with 3:0.5,5:0.5')",
                           timeout=240_000)
    page.wait_for_function("() => document.querySelector('#matters-note')?.innerText.includes('Hand-marked')")
    page.wait_for_timeout(3000)  # any late event would have failed by now
    page.locator("#matters-chart .main-svg").first.wait_for()
    page.locator("#matters-chart").scroll_into_view_if_needed()
    assert page.locator("#matters-chart").evaluate(CLIPPED_TITLES) == [], f"#matters-chart titles clipped at {size}"
    log = server.log_text_full()[start:]
    assert "not in the list of choices" not in log and "Traceback" not in log, log[-3000:]
    assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()
    assert not errors and "not in the list of choices" not in page.content()
    _shot(page, size, "mark-kept")

    page.locator("#question textarea").fill("what is <image> here ?")
    page.locator("#send").click()
    page.wait_for_function("() => document.querySelector('#notice')?.innerText.includes('control token')")
    assert "'<image>'" in page.locator("#notice").inner_text()   # the token, shown as text
    page.get_by_role("tab", name="Performance").click()
    page.wait_for_function("() => !document.querySelector('#perf-chart .main-svg')")  # no stale chart
    assert page.locator("#alive-chart .main-svg").count() == 0

    video = tmp_path / "broken.mp4"  # a corrupt video: explained under the video upload too
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-upload input[type=file]").set_input_files(str(video))
    page.wait_for_function("() => document.querySelector('#video-info')?.innerText.includes('❌')")
    page.locator("#video-info").scroll_into_view_if_needed()
    assert _in_view(page, "#video-info") and _in_view(page, "#video-upload")
    assert "Traceback" not in page.content()
    page.close()
