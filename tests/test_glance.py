"""The page's handlers for issue 25's "bugs seen" and "numbers that do not mislead", called as the
page calls them (the browser tests in tests/e2e/test_glance_browser.py drive the same through
Chromium): a control token quoted as text, no stale views after a new picture or a refused
question, the Preset box after a hand edit, a refused upload's message under the upload box, and a
mark redrawn with the previous run's drop layer."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from studio.handlers import CUSTOM_PRESET, Studio, as_text, notice
from studio.registry import ModelRegistry
from studio.schedules import presets_for
from studio.sessions import FrameCache, SessionStore
from studio.state import PageState
from studio.views import VISUAL_FIELDS

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
STAR = str(EXAMPLES / "shapes_0_color.png")
SKIPPED = type(gr.skip())


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("glance")
    return Studio(ModelRegistry(), SessionStore(root / "sessions"), FrameCache(max_bytes=1 << 24), answer_tokens=3)


def _views(outputs: tuple) -> dict:
    """The run's views of a chat update, by name (the last len(VISUAL_FIELDS) outputs)."""
    return dict(zip(VISUAL_FIELDS, outputs[-len(VISUAL_FIELDS):]))


def _ask(studio: Studio, state: PageState, question: str, image: str | None = STAR) -> tuple:
    *_, last = studio.chat(question, image, state, None)
    return last


def test_a_control_token_is_shown_as_text():
    assert as_text("contains '<image>', which") == "contains '&lt;image&gt;', which"
    assert as_text("run `a<b>` and <b>") == "run `a<b>` and &lt;b&gt;"   # code spans are text already
    assert notice("Q&A <s>", "error") == "❌ Q&amp;A &lt;s&gt;"


def test_a_refused_question_quotes_the_token_and_clears_the_last_runs_views(studio):
    state = studio.initial_state()
    done = _ask(studio, state, "what color is the star ?")
    assert state.stats and state.trace_file and Path(state.trace_file).exists()
    assert _views(done)["perf"] is not None
    refused = _ask(studio, state, "what is <image> here ?")
    assert "&lt;image&gt;" in refused[2] and "control token" in refused[2]
    views = _views(refused)
    assert views["perf"] is None and views["alive"] is None and views["table"] is None and views["kept"] is None
    assert views["timeline"].visible is False
    assert state.stats is None and state.trace_file is None   # nothing redraws the old run any more
    assert len(state.turns_full) == 1                          # the conversation stays
    assert studio.on_layer(3, state) == (None, None, "")


def test_views_after_a_new_picture_are_cleared_and_kept_while_a_run_stands(studio):
    state = studio.initial_state()
    _ask(studio, state, "what color is the star ?")
    kept = studio.views_for(state)
    assert all(isinstance(v, SKIPPED) for v in kept)           # the run stands: its views stay
    studio.on_image(str(EXAMPLES / "shapes_1_count.png"), state, None)
    cleared = dict(zip(VISUAL_FIELDS, studio.views_for(state)))
    assert cleared["perf"] is None and cleared["kept"] is None and cleared["matters"] is None
    studio.on_clear(state)
    assert dict(zip(VISUAL_FIELDS, studio.views_for(state)))["table"] is None
    _ask(studio, state, "how many squares are there ?", None)
    assert all(isinstance(v, SKIPPED) for v in studio.views_for(state))
    video = Path(__file__).resolve().parents[1] / "assets" / "videos" / "moving_shapes.mp4"
    studio.on_video(str(video), 4, state, None)                 # a video: the image run's charts go
    assert dict(zip(VISUAL_FIELDS, studio.views_for(state)))["alive"] is None


def test_the_preset_box_follows_a_hand_edited_schedule(studio):
    state = studio.initial_state()
    card = studio.registry.card(state.model_id)
    presets = presets_for(card, card.is_embedded)
    name, text, _ = presets[1]
    state.schedule = text.replace(",", " , ")                  # the same schedule, typed differently
    assert studio.preset_for(state).value == name
    state.schedule = "3:0.5,5:0.5"
    assert not any(t == state.schedule for _, t, _ in presets)
    custom = studio.preset_for(state)
    assert custom.value == CUSTOM_PRESET[1] and CUSTOM_PRESET in [tuple(c) for c in custom.choices]
    assert studio.on_preset(CUSTOM_PRESET[1], state)[0] == "3:0.5,5:0.5"   # picking it changes nothing


def test_a_refused_upload_is_explained_under_the_upload_box(studio, tmp_path):
    state = studio.initial_state()
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 10)
    preview, _, _, note, _ = studio.on_image(str(corrupt), state, None)
    assert preview is None and note.startswith("❌")
    line = studio.image_info(state)
    assert line == note and str(tmp_path) not in line          # the same message, no server path
    studio.on_image(STAR, state, None)
    assert "❌" not in studio.image_info(state)


def test_a_mark_redrawn_with_the_previous_runs_drop_layer(studio):
    """After a run whose drop layers differ from the last one's, the page may still send the old
    layer: the first drop layer is drawn instead, and the mark is kept."""
    state = studio.initial_state()
    state.schedule = "3:0.5,5:0.5"
    _ask(studio, state, "what color is the star ?")
    kept, heat, dropped, chart, note, *_ = studio.on_mark_box(100, 100, 200, 200, 4, 2, state, None)
    assert dropped is not None and dropped.size[0] > 100        # layer 2 is not a drop layer: layer 3's picture
    assert state.mark_file and "Hand-marked" in note and chart is not None


def test_a_refused_video_is_explained_under_the_video_box(studio, tmp_path):
    state = studio.initial_state()
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    preview, _, _, note, _ = studio.on_video(str(corrupt), 4, state, None)
    assert preview is None and note.startswith("❌")
    assert studio.video_info(state) == note and str(tmp_path) not in note
    video = Path(__file__).resolve().parents[1] / "assets" / "videos" / "moving_shapes.mp4"
    studio.on_video(str(video), 4, state, None)   # a good video, but the embedded model takes none: said there too
    line = studio.video_info(state)
    assert line.startswith("⚠️") and "takes no video" in line
