"""The screenshots of docs/app.md and docs/teaching.md, taken as a visitor sees the page (not a test).

    python tests/e2e/docs_screens.py            # starts the app on a free port; writes docs/screens/*.png

Chromium at 1280 × 800 (desktop) and 390 × 844 (phone), the embedded model, the first gallery
example ("what color is the star ?") under the `shapes-50%` preset (first drop at layer 2, the trap
the lesson is about), and *How it works*' two embedded models side by side at 1400 and 390 px.
Each picture is cropped to its view and stored as a small palette PNG.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]

from PIL import Image  # noqa: E402

from app_server import AppServer  # noqa: E402
from chromium import ARGS, CHROMIUM  # noqa: E402

OUT = HERE.parents[1] / "docs" / "screens"
TRAP = "2:0.6,4:0.5,6:0.3"   # the shapes-50% preset
DONE = "() => document.querySelector('#notice')?.innerText.includes('Done with')"


def save(png: bytes, name: str, width: int | None = None) -> None:
    """A screenshot as a palette PNG (at most ``width`` pixels wide): a few tens of kB each."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        OUT / name, optimize=True)
    print(f"{OUT / name}: {image.width}×{image.height}, {(OUT / name).stat().st_size // 1024} kB")


def shot(page, selectors: list[str], name: str, width: int | None = None, pad: int = 8) -> None:
    """The union of the elements' boxes (page coordinates), cropped from a full-page screenshot."""
    boxes = [page.locator(s).first.evaluate(
        "(el) => { const r = el.getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, r.right + scrollX,"
        " r.bottom + scrollY]; }") for s in selectors]
    x0, y0 = min(b[0] for b in boxes) - pad, min(b[1] for b in boxes) - pad
    x1, y1 = max(b[2] for b in boxes) + pad, max(b[3] for b in boxes) + pad
    clip = {"x": max(0, x0), "y": max(0, y0), "width": x1 - max(0, x0), "height": y1 - max(0, y0)}
    save(page.screenshot(full_page=True, clip=clip), name, width)


def ask_first_example(page, schedule: str = TRAP) -> None:
    page.wait_for_selector("#question textarea")
    page.locator("#gallery img").nth(0).click()
    page.wait_for_function("() => document.querySelector('#image-info')?.innerText.includes('vision tokens')")
    page.locator("#schedule textarea").fill(schedule)
    page.locator("#schedule textarea").press("Tab")
    page.wait_for_function("() => document.querySelector('#preset input')?.value.startsWith('shapes-50%')")
    page.locator("#send").click()
    page.wait_for_function(DONE, timeout=120_000)
    page.wait_for_function("() => document.querySelector('#run-summary')?.innerText.includes('Expected answer')")
    page.wait_for_timeout(800)


def set_layer(page, layer: int) -> None:
    box = page.locator("#layer input[type=number]")
    box.fill(str(layer))
    box.press("Enter")
    page.wait_for_function(f"() => document.body.innerText.includes('Layer {layer}:')")
    page.wait_for_timeout(1200)


def desktop(browser, url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(60_000)
    page.goto(url)
    ask_first_example(page)
    shot(page, ["#chat-row", "#run-summary"], "answers.png", 1000)
    page.locator("#layer-sweep").scroll_into_view_if_needed()
    page.locator("#layer-sweep").click()
    page.wait_for_function("() => document.querySelector('#layer-sweep-table')?.innerText.includes('runs in')")
    page.wait_for_function("() => document.querySelectorAll('#layer-sweep-chart .scatterlayer .trace').length === 3")
    page.wait_for_timeout(800)
    shot(page, ["#layer-sweep-table", "#layer-sweep-chart"], "one-click-sweep.png", 1000)
    set_layer(page, 2)
    shot(page, ["#kept-overlay", "#heatmap"], "patches-layer-2.png", 900)
    page.get_by_role("tab", name="What matters").click()
    page.locator("#baseline input").click()
    page.get_by_role("option", name="random").click()
    page.wait_for_function("() => document.querySelectorAll('#matters-chart .scatterlayer .trace').length === 3")
    page.wait_for_timeout(800)
    shot(page, ["#matters-chart", "#matters-note"], "what-matters.png", 900)
    page.get_by_role("tab", name="Performance").click()
    page.locator("#perf-chart .main-svg").first.wait_for()
    page.wait_for_timeout(800)
    shot(page, ["#perf-chart"], "performance.png", 900)
    page.get_by_role("tab", name="How it works").click()
    page.locator("#sweep-chart .main-svg").first.wait_for()
    page.wait_for_timeout(800)
    shot(page, ["#sweep-tie", "#sweep-chart"], "sweep-figure.png", 900)
    page.close()


def phone(browser, url: str) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.set_default_timeout(60_000)
    page.goto(url)
    ask_first_example(page)
    save(page.screenshot(), "phone-answers.png")           # what the visitor sees right after Send
    page.locator("#gallery").scroll_into_view_if_needed()
    save(page.screenshot(), "phone-gallery-tabs.png")
    page.close()


def two_models(browser, url: str, width: int, name: str) -> None:
    """*How it works* → the two embedded models side by side, as a visitor at ``width`` px sees them."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#question textarea")
    page.get_by_role("tab", name="How it works").click()
    page.locator("#two-models-chart .main-svg").first.wait_for()
    page.wait_for_timeout(800)
    shot(page, ["#two-models-story", "#two-models-chart"], name, min(width, 1000))
    page.close()


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    server = AppServer(log_path=Path(tempfile.mkdtemp()) / "app.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            desktop(browser, server.url)
            phone(browser, server.url)
            two_models(browser, server.url, 1400, "two-models.png")
            two_models(browser, server.url, 390, "phone-two-models.png")
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
