"""Issue 25 in a real browser (Playwright + Debian's Chromium), at desktop (1280 px) and phone
(390 × 844) sizes: the default rule on the page and the measured warning in the preset list, the
expected answer and right/wrong beside each answer, the reason under the answers, the note before
the answers for a question the embedded model cannot answer, and the one-click drop-layer sweep
with its tie into *How it works*. Saves results/e2e/screenshot-lesson-{desktop,phone}.png and
screenshot-layer-sweep-{desktop,phone}.png."""

import re

import pytest

from chromium import ARGS, CHROMIUM, SHOTS
from chromium import sync_api as _sync_api

sync_api = _sync_api()

from app_server import AppServer  # noqa: E402

TRAP = "2:0.6,4:0.5,6:0.3"
SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = AppServer(log_path=tmp_path_factory.mktemp("e2e-lesson") / "app.log")
    yield app
    app.stop()


@pytest.fixture(params=list(SIZES))
def page(request, server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport=SIZES[request.param], is_mobile=request.param == "phone",
                                has_touch=request.param == "phone")
        page.set_default_timeout(60_000)
        page.goto(server.url)
        page.wait_for_selector("#question textarea")
        page.size_name = request.param
        yield page
        browser.close()


def _text(page, selector: str) -> str:
    return page.locator(selector).first.inner_text()


def _wait_text(page, selector: str, text: str, timeout: float = 120_000) -> None:
    page.wait_for_function(f"() => document.querySelector({selector!r})?.innerText.includes({text!r})",
                           timeout=timeout)


def _ask(page, question: str | None = None) -> None:
    if question is not None:
        page.locator("#question textarea").fill(question)
    page.locator("#send").click()
    _wait_text(page, "#notice", "Done with")
    _wait_text(page, "#run-summary", "V²Drop ran")


def _pick_first_example(page) -> None:
    page.locator("#gallery img").nth(0).scroll_into_view_if_needed()
    page.locator("#gallery img").nth(0).click()
    _wait_text(page, "#image-info", "generated scene")


def _in_viewport(page, selector: str) -> bool:
    box = page.locator(selector).first.bounding_box()
    width = page.viewport_size["width"]
    return box is not None and box["x"] >= -1 and box["x"] + box["width"] <= width + 1


def test_default_rule_and_trap_label(page):
    assert "3, 17 and 22" in _text(page, "#default-rule")
    schedule = page.locator("#schedule textarea").input_value()
    assert schedule == "1:0.6094,4:0.6094,6:0.6094", "the default follows the rule"
    preset = page.get_by_label("Preset")
    preset.scroll_into_view_if_needed()
    preset.click()
    option = page.get_by_role("option", name=re.compile(r"^shapes-50%"))
    assert re.search(r"⚠️ first drop at layer 2: 47 % of unpruned accuracy on this model", option.inner_text())
    assert "⚠️" not in page.get_by_role("option", name=re.compile(r"^default")).inner_text()
    page.keyboard.press("Escape")


def test_truth_reason_and_the_one_click_sweep(page):
    _pick_first_example(page)
    page.locator("#schedule textarea").fill(TRAP)
    page.locator("#schedule textarea").press("Tab")
    _wait_text(page, "#schedule-info", "vision tokens")
    _ask(page)
    summary = _text(page, "#run-summary")
    assert "Expected answer: orange" in summary and "Unpruned: ✅ right · V²Drop: ❌ wrong" in summary
    assert re.search(r"Why: V²Drop dropped all 9 of the star's patches before layer 2, where they changed least "
                     r"\(variation [\d.]+ vs [\d.]+ for the rest of the picture\)", summary), summary
    assert re.search(r"seed for this run: \d+", summary)
    drop, full = _text(page, "#chat-drop"), _text(page, "#chat-full")
    assert "wrong (expected orange)" in drop and f"V²Drop at {TRAP}" in drop
    assert "right · unpruned (no drop)" in full
    page.locator("#run-summary").scroll_into_view_if_needed()
    assert _in_viewport(page, "#run-summary")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"screenshot-lesson-{page.size_name}.png"), full_page=False)

    page.locator("#layer-sweep").scroll_into_view_if_needed()
    page.locator("#layer-sweep").click()
    _wait_text(page, "#layer-sweep-table", "runs in")
    table = _text(page, "#layer-sweep-table")
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^(\d)\t.*$", table, re.M)}
    assert sorted(rows) == [1, 2, 3], table
    assert rows[2].split("\t")[1] == "no ❌ 0 %" and rows[3].split("\t")[1] == "orange ✅ 100 %", table
    page.wait_for_function("() => document.querySelectorAll('#layer-sweep-chart .scatterlayer .trace').length === 3")
    assert _in_viewport(page, "#layer-sweep")
    page.locator("#layer-sweep-chart").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"screenshot-layer-sweep-{page.size_name}.png"), full_page=False)
    page.get_by_role("tab", name="How it works").click()
    _wait_text(page, "#sweep-tie", "at layer 2: the star lost")
    assert "at layer 3: the star kept" in _text(page, "#sweep-tie")
    assert "Traceback" not in page.content()


def test_an_off_template_question_gets_the_note_before_the_answers(page):
    _pick_first_example(page)
    page.locator("#question textarea").fill("Which shape is orange?")
    page.evaluate("""() => {   // every notice the page shows, with the V²Drop pane's text at that moment
        window.__notices = [];
        const notice = document.querySelector('#notice');
        new MutationObserver(() => window.__notices.push([notice.innerText,
            document.querySelector('#chat-drop').innerText])).observe(notice, {subtree: true, childList: true,
                                                                              characterData: true});
    }""")
    page.locator("#send").click()
    _wait_text(page, "#notice", "Done with")
    seen = page.evaluate("() => window.__notices")
    early = [drop for text, drop in seen if "four question templates" in text]
    assert early, seen
    assert "V²Drop at" not in early[0], "the note came before V²Drop's answer"
    _wait_text(page, "#run-summary", "V²Drop ran")
    summary = _text(page, "#run-summary")
    assert "four question templates" in summary and "what color is the star ?" in summary
    assert "Expected answer" not in summary
