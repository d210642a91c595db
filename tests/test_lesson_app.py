"""Issue 25 through the HTTP API of ``python app.py`` (``gradio_client``, one visitor per client):
truth beside every answer, the reason when V²Drop's answer differs, the one-click drop-layer
sweep, the default rule and the warning labels, and a fresh random seed per run."""

import json
import re
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from app_server import AppServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
RECORDS = json.loads((EXAMPLES / "shapes_questions.json").read_text())
TRAP = "2:0.6,4:0.5,6:0.3"   # the shapes-50% preset: first drop at layer 2
FULL, DROP, NOTICE, STORY = 0, 1, 2, 13   # /chat answers: panes, notice, question box, the views (13: the story)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("lesson")
    app = AppServer(log_path=work / "app.log", env={"GRADIO_TEMP_DIR": str(work / "gradio"),
                                                    "V2DROP_SESSION_DIR": str(work / "sessions")})
    yield app
    app.stop()


def _answer(pane: list) -> str:
    """The last answer's text (Gradio 6 sends a message's content as a list of typed parts)."""
    content = pane[-1]["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def _ask(client: Client, question: str, picture: str | None, schedule: str | None = None) -> tuple[list, str]:
    if schedule is not None:
        client.predict(schedule, api_name="/set_schedule")
    out = client.predict(question, handle_file(str(EXAMPLES / picture)) if picture else None, api_name="/chat")
    summary = client.predict(api_name="/run_summary")
    return out, summary[0] if isinstance(summary, (list, tuple)) else summary


def test_a_gallery_scene_shows_its_expected_answer_and_each_side_right_or_wrong(server):
    client = Client(server.url, verbose=False)
    out, summary = _ask(client, "what color is the star ?", "shapes_0_color.png")
    assert "Expected answer: **orange**" in summary
    assert re.search(r"Unpruned: ✅ right · V²Drop: (✅ right|❌ wrong)", summary)
    full, drop = _answer(out[FULL]), _answer(out[DROP])
    assert "✅ right · unpruned (no drop)" in full
    assert "V²Drop at `1:0.6094,4:0.6094,6:0.6094`" in drop, "each turn says the schedule and method (the default)"


def test_a_trap_schedule_gets_the_reason_from_the_trace(server):
    client = Client(server.url, verbose=False)
    out, summary = _ask(client, "what color is the star ?", "shapes_0_color.png", TRAP)
    drop = _answer(out[DROP])
    assert "❌ wrong (expected orange)" in drop and f"V²Drop at `{TRAP}`" in drop
    assert re.search(r"Why: V²Drop dropped all 9 of the star's patches before layer 2, where they changed least "
                     r"\(variation [\d.]+ vs [\d.]+ for the rest of the picture\)\.", summary), summary
    assert "dropped all 9 of the star's patches" in out[NOTICE]
    assert re.search(r"random baseline's seed for this run: \d+", summary)
    story = out[STORY]
    assert "**The question's objects in this run:** V²Drop dropped all 9 of the star's patches" in story


def test_an_off_template_question_and_a_photo_get_the_note_before_the_answers(server):
    client = Client(server.url, verbose=False)
    jobs = client.submit("Which shape is orange?", handle_file(str(EXAMPLES / "shapes_0_color.png")), api_name="/chat")
    first = next(iter(jobs))  # the first update, before any answer
    jobs.result()
    assert "only answers four question templates" in first[NOTICE] and "what color is the star ?" in first[NOTICE]
    _, summary = _ask(client, "what is in the cup?", "coffee.png")
    assert "not a gallery scene" in summary and "Expected answer" not in summary


def test_the_one_click_sweep_runs_the_question_at_every_first_layer(server):
    client = Client(server.url, verbose=False)
    early = client.predict(api_name="/layer_sweep")
    assert "Ask a question about a picture first" in early[0]
    _ask(client, "what color is the star ?", "shapes_0_color.png", TRAP)
    table, chart, tie = client.predict(api_name="/layer_sweep")
    lines = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| (\d) \| .*$", table, re.M)}
    assert sorted(lines) == [1, 2, 3], table       # 4..7 cannot reach the budget of 2:0.6,4:0.5,6:0.3
    assert "| no ❌ 0 % |" in lines[2] and "| orange ✅ 100 % |" in lines[2 + 1]
    assert "2: `2:0.5391,4:0.5391,6:0.5391`" in table
    assert "Random: one draw, seed" in table and "Expected: **orange**" in table
    assert "at layer 2: the star lost" in tie and "at layer 3: the star kept" in tie
    assert chart is not None and re.search(r"9 runs in [\d.]+ s", table)   # its time: python -m benchmarks.layer_sweep


def test_presets_warn_where_the_sweep_measured_a_trap_and_the_default_follows_the_rule(server):
    config = json.loads(__import__("urllib.request").request.urlopen(server.url + "config", timeout=30).read())
    dropdowns = [c["props"] for c in config["components"] if c.get("props", {}).get("label") == "Preset"]
    choices = {value: label for label, value in dropdowns[0]["choices"]}
    assert dropdowns[0]["value"] == "default" and "1:0.6094,4:0.6094,6:0.6094" in choices["default"]
    assert re.search(r"⚠️ first drop at layer 2: \d+ % of unpruned accuracy on this model", choices["shapes-50%"])
    assert "⚠️" not in choices["default"] and "⚠️" not in choices["shapes-15%"]
    rule = [c["props"]["value"] for c in config["components"] if c.get("props", {}).get("elem_id") == "default-rule"]
    assert "3, 17 and 22" in rule[0]


def test_every_run_draws_a_fresh_seed(server):
    client = Client(server.url, verbose=False)
    seeds = set()
    for _ in range(3):
        _, summary = _ask(client, "how many squares are there ?", "shapes_1_count.png")
        seeds.add(int(re.search(r"seed for this run: (\d+)", summary).group(1)))
    assert len(seeds) == 3
