"""V²Drop Studio: chat with an LVLM and its V²Drop-pruned self side by side, and see which vision
tokens each layer dropped.

    python app.py                      # http://127.0.0.1:7860, embedded shapes model, no network
    python app.py --host 0.0.0.0 --port 8080
    python app.py --benchmark          # time to first tokens / full pair on the embedded model
    python app.py --benchmark-sessions 300   # memory and temp disk over many visitor sessions

On a public host (a Space, or any interface but 127.0.0.1) visitors may only pick the operator's
listed models; see the hosting options below and "Hosting safety" in docs/app.md.

Layout, event wiring and launch options only: the handlers are in ``studio/handlers.py``, model
logic in ``studio/`` (``inputs``, ``videos``, ``pair``, ``schedules``, ``registry``), drawing in
``visualize/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware
from transformers.utils import logging as transformers_logging

from studio import zerogpu
from studio.budget import MemoryBudget
from studio.edge import EdgeGuard, event_inputs
from studio.editor import MarkEditor, mark_brush
from studio.handlers import Studio, notice
from studio.hosting import HostingPolicy, add_arguments
from studio.inputs import load_image
from studio.matters import BASELINES, baseline_label
from studio.pair import stream_pair
from studio.registry import EMBEDDED_ID, ModelRegistry
from studio.sessions import DEFAULT_ROOT, FrameCache, SessionStore
from studio.state import PageState
from studio.values import QuietSlider, whole_number
from studio.videos import MAX_VIDEO_FRAMES, VIDEO_MODELS
from studio.views import VISUAL_FIELDS
from v2drop.resolution import CAPS
from v2drop.schedule import DEFAULT_RULE, DropSchedule
from v2drop.video import SUPPORTED_EXTENSIONS
from visualize import charts, story

log = logging.getLogger("v2drop.app")
ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
VIDEOS_DIR = ROOT / "assets" / "videos"
MAX_FILE_SIZE = "100mb"  # videos; images are decoded with their own pixel limits
CSS = """
#notice {min-height: 1.5em}
.pane-title {text-align:center; font-weight:600}
/* a picture's label sits above it, never over its top row of patches */
#kept-overlay, #heatmap, #dropped-overlay, #preview, #video-preview {padding-top: 34px !important}
#kept-overlay .icon-button-wrapper, #heatmap .icon-button-wrapper, #dropped-overlay .icon-button-wrapper,
#preview .icon-button-wrapper, #video-preview .icon-button-wrapper {top: -32px !important}
#gallery > label[data-testid="block-label"] {position: static !important; margin-bottom: 30px}
/* the gallery: as many columns as fit, every example in view (no inner or sideways scroll) */
#gallery, #gallery .grid-wrap {height: auto !important; max-height: none !important; overflow: visible !important}
#gallery .grid-container {grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)) !important}
@media (max-width: 640px) {
  /* a phone: both answers side by side, so that both are in view after Send */
  #chat-row {flex-wrap: nowrap !important; gap: 6px !important}
  #chat-row > * {min-width: 0 !important; flex: 1 1 0 !important}
  #chat-full, #chat-drop {height: 260px !important}
  /* the schedule chip under an answer wraps inside its bubble */
  #chat-full code, #chat-drop code {white-space: normal !important; word-break: break-all}
}
"""
# Send scrolls the two answers into view when they are not (e.g. after a click in the gallery below
# them, or on a phone): plain JS, no round trip, no Python
SHOW_ANSWERS_JS = ("() => { const row = document.querySelector('#chat-row'); if (!row) return; "
                   "const r = row.getBoundingClientRect(); "
                   "if (r.top < 0 || r.bottom > window.innerHeight) row.scrollIntoView({block: 'start'}); }")
EXAMPLES = [
    ["shapes_0_color.png", "what color is the star ?"],
    ["shapes_1_count.png", "how many squares are there ?"],
    ["shapes_2_position.png", "is the white star on the right or the left ?"],
    ["shapes_3_exist.png", "is there a purple star ?"],
    ["shapes_5_count.png", "how many triangles are there ?"],
    ["drawn_13_count.png", "how many stars are there ?"],
    ["drawn_26_position.png", "is the blue star on the right or the left ?"],
    ["astronaut.png", "What is the person wearing?"],
    ["chelsea.png", "What animal is this, and what colour is it?"],
    ["coffee.png", "What is in the cup?"],
]


def _load_video_examples() -> dict:
    try:
        return json.loads((VIDEOS_DIR / "examples.json").read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class ModelPanel:
    dropdown: Any
    trust: Any
    load: Any
    info: Any
    preset: Any
    schedule: Any
    schedule_info: Any


@dataclass
class MediaPanel:
    image_tab: Any
    image_file: Any
    preview: Any
    video_tab: Any
    video_file: Any
    frames: Any
    video_example: Any
    video_preview: Any
    image_info: Any = None   # vision tokens of this image under the image cap
    video_info: Any = None   # under the video upload: why a video was refused, or that the model takes none


@dataclass
class ChatPanel:
    full: Any
    drop: Any
    question: Any
    send: Any
    clear: Any
    gallery: Any
    summary: Any = None          # the run's summary: expected answer, right/wrong, the reason
    sweep: Any = None            # the one-click drop-layer sweep: button, table, chart
    sweep_table: Any = None
    sweep_chart: Any = None


@dataclass
class RunPanel:
    """The views of the last run; fields named as :class:`studio.views.Visuals`' (plus the player)."""

    layer: Any
    play: Any
    layer_caption: Any
    kept: Any
    heat: Any
    drop_layer: Any
    dropped: Any
    timeline: Any
    perf: Any
    alive: Any
    table: Any
    retention: Any
    trace_file: Any
    story: Any
    timer: Any
    matters: Any = None          # the what-matters chart
    matters_note: Any = None
    baseline: Any = None         # the baseline picker
    editor: Any = None           # "Mark what matters"
    clear_marks: Any = None
    sweep_tie: Any = None        # How it works: the benchmark sweep tied to the visitor's question
    sweep_story: Any = None      # How it works: the picked embedded model's measured sweep, in words
    sweep_chart: Any = None      # and as a figure

    def visual_outputs(self) -> list:
        return [getattr(self, name) for name in VISUAL_FIELDS]


# ------------------------------------------------------------------------------------ layout
def _model_panel(studio: Studio, policy: HostingPolicy) -> ModelPanel:
    card = studio.registry.card(EMBEDDED_ID)
    first, text = studio.first_schedule(card)
    typed = policy.allow_hub_ids or policy.allow_local_folders
    with gr.Accordion("Model", open=True):
        # custom values always reach the handler, so that the policy (not Gradio) answers a refused id
        # (label, id): a model too large for the memory budget is marked in its label
        choices = [(studio.registry.model_label(m), m) for m in policy.choices()]
        dropdown = gr.Dropdown(choices=choices, value=EMBEDDED_ID, allow_custom_value=True,
                               label="Model (pick one" + (" or type a hub id" if typed else "") + ")",
                               elem_id="model-id")
        trust = gr.Checkbox(False, label="trust remote code (runs code from the model's repository; allowed by "
                            f"the operator for {', '.join(sorted(policy.trusted))})",
                            visible=policy.remote_code_enabled, elem_id="trust-remote-code")
        load = gr.Button("Load model", size="sm")
        info = gr.Markdown(studio.model_info(card))
    with gr.Accordion("Drop schedule", open=True):
        preset = gr.Dropdown(choices=studio.preset_choices(card), value=first, label="Preset", elem_id="preset")
        schedule = gr.Textbox(text, label="Drop layers and keep ratios (layer:keep_ratio, …)",
                              info="keep_ratio = the share of the still-alive vision tokens kept at that layer "
                                   "(0-based decoder layer; ratios compound)", elem_id="schedule")
        state = studio.initial_state()
        schedule_info = gr.Markdown(studio.check_schedule(text, card, state)[1], elem_id="schedule-info")
        gr.Markdown(f"**Default rule** (every model, whichever method wins): {DEFAULT_RULE}. Presets marked ⚠️ "
                    "start where this model's measured drop-layer sweep shows V²Drop doing worse than random "
                    "dropping (see *How it works*).", elem_id="default-rule")
    return ModelPanel(dropdown, trust, load, info, preset, schedule, schedule_info)


def _media_panel(studio: Studio, video_examples: dict) -> MediaPanel:
    with gr.Tabs(overflow_behavior="wrap"):  # every tab in view on a phone too
        with gr.Tab("Image", elem_id="image-tab") as image_tab:
            image_file = gr.File(label="Image (upload)", file_types=["image"], type="filepath", elem_id="image-upload")
            preview = gr.Image(label="Image", interactive=False, height=220, elem_id="preview")
            image_info = gr.Markdown(elem_id="image-info")
        with gr.Tab("Video", elem_id="video-tab") as video_tab:
            gr.Markdown(f"Video models only: {VIDEO_MODELS}. Frames are sampled uniformly; V²Drop ranks the tokens "
                        "of all frames together.")
            video_file = gr.File(label="Video (upload mp4, webm, mov, gif, …)", type="filepath",
                                 file_types=list(SUPPORTED_EXTENSIONS), elem_id="video-upload")
            video_info = gr.Markdown(elem_id="video-info")
            frames = QuietSlider(1, MAX_VIDEO_FRAMES, value=studio.registry.card(EMBEDDED_ID).default_frames, step=1,
                               label="Frames sampled from the video", elem_id="num-frames")
            video_example = gr.Dropdown(
                choices=[(f"{name} — {v.get('description', '')}", name) for name, v in video_examples.items()
                         if (VIDEOS_DIR / name).exists()],
                value=None, label="Example videos", elem_id="video-examples")
            video_preview = gr.Image(label="Sampled frames (what the model sees)", interactive=False,
                                     elem_id="video-preview", format="png")
    return MediaPanel(image_tab, image_file, preview, video_tab, video_file, frames, video_example, video_preview,
                      image_info, video_info)


def _chat_panel() -> ChatPanel:
    with gr.Row(elem_id="chat-row"):
        full = gr.Chatbot(label="Unpruned", height=300, elem_id="chat-full")
        drop = gr.Chatbot(label="V²Drop", height=300, elem_id="chat-drop")
    with gr.Row():
        question = gr.Textbox(placeholder="Ask about the image, e.g. 'what color is the star ?'", show_label=False,
                              scale=5, max_lines=4, elem_id="question")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        clear = gr.Button("Clear chat", scale=1)
    summary = gr.Markdown(elem_id="run-summary")
    with gr.Accordion("The drop layer, one click away", open=True):
        sweep = gr.Button("Sweep the first drop layer for this question (V²Drop, random, uniform; same budget)",
                          size="sm", elem_id="layer-sweep")
        sweep_table = gr.Markdown(elem_id="layer-sweep-table")
        sweep_chart = gr.Plot(label="Your question, first drop layer moved", elem_id="layer-sweep-chart",
                              visible=False)   # shown with a sweep: no empty frame before one
    examples = [(str(EXAMPLES_DIR / f), q) for f, q in EXAMPLES if (EXAMPLES_DIR / f).exists()]
    gallery = gr.Gallery(examples, label="Example gallery: click one (shapes scenes, with their ground truth, suit "
                         "the embedded models; photos suit hub models)", columns=8, height=170, allow_preview=False,
                         buttons=[], elem_id="gallery")
    return ChatPanel(full, drop, question, send, clear, gallery, summary, sweep, sweep_table, sweep_chart)


def _run_panel(studio: Studio, num_layers: int) -> RunPanel:
    with gr.Tabs(overflow_behavior="wrap"):  # every tab in view on a phone too
        with gr.Tab("Patches per layer"):
            with gr.Row():
                layer = QuietSlider(0, num_layers - 1, value=0, step=1, label="Decoder layer", scale=5, elem_id="layer")
                play = gr.Button("▶ Play", scale=1, size="sm")
            caption = gr.Markdown()
            with gr.Row():
                kept = gr.Image(label="Kept and dropped patches (key under the picture)",
                                interactive=False, elem_id="kept-overlay", format="png")
                heat = gr.Image(label="Variation ‖h_l − h_(l−1)‖₂ (colour bar under it)", interactive=False,
                                elem_id="heatmap", format="png")
            with gr.Row():
                # a custom value is let through (the handlers check it): an event sent while a new run
                # changes the drop layers must not fail on the previous run's layer
                drop_layer = gr.Dropdown(label="Which patches went at drop layer…", choices=[], scale=1,
                                         allow_custom_value=True, elem_id="drop-layer")
                dropped = gr.Image(label="Dropped at that layer (red, hatched)", interactive=False, scale=2,
                                   format="png", height=400, elem_id="dropped-overlay")
            timeline = gr.Plot(label="Video: kept tokens per frame and layer", elem_id="frame-timeline",
                               visible=False)  # shown for video runs only
        with gr.Tab("What matters", elem_id="matters-tab"):
            matters = _matters_tab()
        with gr.Tab("Performance"):
            perf = gr.Plot(label="Latency and memory", elem_id="perf-chart")
            alive = gr.Plot(label="Vision tokens alive per layer", elem_id="alive-chart")
            table = gr.Dataframe(headers=charts.METRIC_HEADERS, label="Numbers", interactive=False)
            retention = gr.Plot(label="Retention by position (paper Fig. 2)")
            trace_file = gr.File(label="This run's trace (JSON)", interactive=False)
        with gr.Tab("How it works"):
            story_md = gr.Markdown(story.how_it_works(), elem_id="story")
            _two_models_panel(studio)
            sweep_story, sweep_chart = _sweep_panel(studio)
            tie = gr.Markdown("**Your question, swept:** press *Sweep the first drop layer* under the answers to see "
                              "what happens to your own question at each first drop layer.", elem_id="sweep-tie")
    return RunPanel(layer, play, caption, kept, heat, drop_layer, dropped, timeline, perf, alive, table, retention,
                    trace_file, story_md, gr.Timer(0.9, active=False), *matters, sweep_tie=tie,
                    sweep_story=sweep_story, sweep_chart=sweep_chart)


def _two_models_panel(studio: Studio) -> None:
    """The embedded models side by side: where each one's object patches are lazy, and what that does
    to V²Drop against random dropping (each model folder's ``report.json`` and ``sweep.json``)."""
    text, figure = studio.embedded_comparison()
    gr.Markdown(text, elem_id="two-models-story")
    gr.Plot(figure, label="Two embedded models: lazy object patches and V²Drop vs random", elem_id="two-models-chart")


def _sweep_panel(studio: Studio) -> tuple:
    """The picked embedded model's drop-layer sweep (its folder's ``sweep.json``, written by
    ``python -m benchmarks.sweep``): what its numbers say and a figure; follows the model picker."""
    text, figure = studio.measured_view(studio.registry.card(EMBEDDED_ID))
    return gr.Markdown(text, elem_id="sweep-story"), gr.Plot(figure, visible=figure is not None, elem_id="sweep-chart",
                                                             label=f"Drop-layer sweep on {EMBEDDED_ID}")


def _matters_tab() -> tuple:
    """(chart, note, baseline picker, mark editor, clear button) of the What-matters tab."""
    gr.Markdown("How many of the vision tokens that matter for the question does each layer still process? "
                "For a generated scene from the gallery the app knows them (**ground truth**: the patches of the "
                "objects your question names); for any picture you can **mark** them: brush over the picture "
                "below, or click two opposite corners of a box on the image on the left. A token counts when at "
                "least 25 % of its patch is painted. The overlays outline these tokens in cyan.")
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            editor = MarkEditor(label="Mark what matters (brush)", type="numpy", image_mode="RGBA", sources=[],
                                transforms=[], layers=False, format="png", height=320, elem_id="mark-editor",
                                brush=mark_brush(), buttons=[])
            clear_marks = gr.Button("Clear the mark", size="sm", elem_id="clear-marks")
            baseline = gr.Dropdown(choices=[(baseline_label(m), m) for m in BASELINES], value="none",
                                   label="Add a baseline (one extra prefill at V²Drop's average budget)",
                                   elem_id="baseline")
        with gr.Column(scale=2):
            chart = gr.Plot(label="What matters, alive per layer", elem_id="matters-chart")
            note = gr.Markdown(elem_id="matters-note")
    return chart, note, baseline, editor, clear_marks


# ------------------------------------------------------------------------------------ wiring
def _wire_model(studio: Studio, model: ModelPanel, media: MediaPanel, chat: ChatPanel, run: RunPanel,
                state: gr.State, note: gr.Markdown) -> None:
    model_job = dict(concurrency_limit=1, concurrency_id="model")
    model.preset.input(studio.on_preset, [model.preset, state], [model.schedule, model.schedule_info, state],
                       api_name="set_preset")
    model.schedule.change(studio.on_schedule_edit, [model.schedule, state], [model.schedule_info, state],
                          api_name="set_schedule"
                          ).then(studio.preset_for, [state], [model.preset], api_visibility="private")
    model.load.click(studio.on_switch_model, [model.dropdown, model.trust, state],
                     [model.dropdown, model.info, model.preset, model.schedule, model.schedule_info, note, state,
                      media.frames, chat.full, chat.drop] + run.visual_outputs(),
                     api_name="switch_model", **model_job
                     ).then(studio.image_info, [state], [media.image_info], api_name=False
                            ).then(studio.video_info, [state], [media.video_info], api_visibility="private"
                                   ).then(studio.sweep_view, [state], [run.sweep_story, run.sweep_chart],
                                          api_visibility="private")


def _wire_media(studio: Studio, media: MediaPanel, chat: ChatPanel, state: gr.State, note: gr.Markdown,
                video_examples: dict, editor: Any) -> None:
    panes = [chat.full, chat.drop, note, state]
    media.image_file.change(studio.on_image, [media.image_file, state], [media.preview] + panes, api_name="set_image"
                            ).then(studio.image_info, [state], [media.image_info], api_name="image_info"
                                   ).then(studio.editor_for, [state], [editor], api_visibility="private"
                                          ).then(studio.run_summary, [state],
                                                 [chat.summary, chat.sweep_table, chat.sweep_chart],
                                                 api_name="summary_after_image", api_visibility="private")
    media.video_file.change(studio.on_video, [media.video_file, media.frames, state], [media.video_preview] + panes,
                            api_name="set_video"
                            ).then(studio.video_info, [state], [media.video_info], api_visibility="private")
    # also fires when loading a model sets its default frame count: the video is sampled again
    media.frames.change(studio.on_video, [media.video_file, media.frames, state], [media.video_preview] + panes,
                        api_visibility="private", trigger_mode="always_last")

    def on_video_example(name: str | None):
        if not isinstance(name, str) or name not in video_examples or not (VIDEOS_DIR / name).exists():
            return gr.skip(), gr.skip()  # only the listed examples: a name is never a path
        return str(VIDEOS_DIR / name), video_examples.get(name, {}).get("question", gr.skip())

    def on_example(evt: gr.SelectData):
        """A gallery click: the example image goes in the upload box (a new chat), its question in the box."""
        shown = [(f, q) for f, q in EXAMPLES if (EXAMPLES_DIR / f).exists()]
        index = whole_number(getattr(evt, "index", None), 0, len(shown) - 1)
        if index is None:  # not one of the gallery's pictures
            return gr.skip(), gr.skip()
        name, question = shown[index]
        return str(EXAMPLES_DIR / name), question

    media.video_example.input(on_video_example, [media.video_example], [media.video_file, chat.question],
                              api_visibility="private")
    media.image_tab.select(lambda s: studio.on_media_tab("image", s), [state], panes, api_visibility="private")
    media.video_tab.select(lambda s: studio.on_media_tab("video", s), [state], panes, api_visibility="private")
    chat.gallery.select(on_example, None, [media.image_file, chat.question], api_visibility="private")


def _wire_chat(studio: Studio, media: MediaPanel, chat: ChatPanel, run: RunPanel, state: gr.State,
               note: gr.Markdown) -> None:
    outputs = [chat.full, chat.drop, note, state, chat.question] + run.visual_outputs()
    lesson = [chat.summary, chat.sweep_table, chat.sweep_chart]   # cleared with the run they are about
    # one event for both triggers, so a second click/Enter while this session's turn runs is ignored
    gr.on([chat.send.click, chat.question.submit], zerogpu.on_gpu(studio, studio.chat, zerogpu.chat_seconds),
          [chat.question, media.image_file, state],
          outputs, api_name="chat", trigger_mode="once", concurrency_limit=1, concurrency_id="model"
          ).then(studio.run_summary, [state], lesson, api_name="run_summary")
    gr.on([chat.send.click, chat.question.submit], None, js=SHOW_ANSWERS_JS, api_visibility="private")
    chat.clear.click(studio.on_clear, [state], [chat.full, chat.drop, note, state], api_name="clear"
                     ).then(studio.run_summary, [state], lesson, api_name="summary_after_clear",
                            api_visibility="private")
    chat.sweep.click(zerogpu.on_gpu(studio, studio.on_layer_sweep, zerogpu.sweep_seconds), [state],
                     [chat.sweep_table, chat.sweep_chart, run.sweep_tie, state], api_name="layer_sweep",
                     concurrency_limit=1, concurrency_id="model")
    run.layer.change(studio.on_layer, [run.layer, state], [run.kept, run.heat, run.layer_caption],
                     api_visibility="private", trigger_mode="always_last")
    run.drop_layer.input(studio.on_drop_layer, [run.drop_layer, state], [run.dropped], api_visibility="private")
    run.play.click(studio.on_play, [run.play, run.layer, state], [run.layer, run.timer, run.play],
                   api_visibility="private")
    run.timer.tick(studio.on_tick, [run.layer, state], [run.layer, run.timer, run.play], api_visibility="private")


def _wire_matters(studio: Studio, media: MediaPanel, run: RunPanel, state: gr.State) -> None:
    """Marks and the baseline pick redraw the what-matters chart and the outlines of the last run."""
    views = [run.kept, run.heat, run.dropped, run.matters, run.matters_note, run.trace_file]
    shown = [run.layer, run.drop_layer, state]
    # a brush stroke (user input only: the app setting the editor's picture fires nothing)
    run.editor.input(studio.on_mark, [run.editor] + shown, views + [state], api_name="mark", trigger_mode="always_last")
    box = [gr.Number(visible=False) for _ in range(4)]  # x0, y0, x1, y1 in pixels of the picture (API only)
    gr.Button(visible=False).click(studio.on_mark_box, box + shown, views + [run.editor, state], api_name="mark_box")
    media.preview.select(studio.on_picture_click, shown, views + [run.editor, state], api_visibility="private")
    run.clear_marks.click(studio.on_clear_marks, shown, views + [run.editor, state], api_name="clear_marks")
    run.baseline.input(zerogpu.on_gpu(studio, studio.on_baseline, zerogpu.baseline_seconds), [run.baseline, state],
                       [run.matters, run.matters_note, run.trace_file, state], api_name="set_baseline",
                       concurrency_limit=1, concurrency_id="model")


def build_demo(studio: Studio, policy: HostingPolicy) -> gr.Blocks:
    """The page: model and media on the left, the two chats and the run's views on the right."""
    embedded = studio.registry.card(EMBEDDED_ID)
    video_examples = _load_video_examples()
    ttl = studio.sessions.idle_seconds
    with gr.Blocks(title="V²Drop Studio", analytics_enabled=False, delete_cache=(int(min(ttl, 600)) or 1,
                                                                                  int(ttl))) as demo:
        # a fresh PageState per session (a callable value); freed when idle or when Gradio drops it
        first = studio.initial_state()
        state = gr.State(partial(PageState, schedule=first.schedule, num_frames=first.num_frames),
                         time_to_live=ttl, delete_callback=studio.on_state_deleted)
        gr.Markdown("# V²Drop Studio\nAsk a question about an image (or a video, with a video model); the **unpruned** "
                    "model and the same model with **V²Drop** (variation-aware vision-token dropping) answer side by "
                    "side. Then look at which image patches each layer dropped.")
        note = gr.Markdown(notice(embedded.note, "warn") if embedded.note else "", elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                model = _model_panel(studio, policy)
                media = _media_panel(studio, video_examples)
            with gr.Column(scale=3):
                chat = _chat_panel()
                run = _run_panel(studio, embedded.num_layers)
        _wire_model(studio, model, media, chat, run, state, note)
        _wire_media(studio, media, chat, state, note, video_examples, run.editor)
        _wire_chat(studio, media, chat, run, state, note)
        _wire_matters(studio, media, run, state)
        # every new image or video, tab switch, cleared chat or refused question says so in the notice:
        # then the run's views go too, unless the session still has its run (no stale numbers)
        note.change(studio.views_for, [state], run.visual_outputs(), api_visibility="private")
        demo.unload(studio.on_unload)
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo


# ------------------------------------------------------------------------------------ start
def warm_up(studio: Studio) -> None:
    """One short run so that the first user does not pay for lazy initialisation."""
    try:
        entry = studio.registry.embedded()
        image, _ = load_image(EXAMPLES_DIR / "shapes_0_color.png")
        schedule = DropSchedule.parse(studio.first_schedule(entry.card())[1])
        for _ in stream_pair(entry.model, entry.processor, image, "what color is the star ?", [], [], schedule,
                             max_new_tokens=2):
            pass
    except Exception:  # noqa: BLE001 - warm-up is best effort
        log.warning("warm-up failed:\n%s", traceback.format_exc())


def _env_number(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def parse_args(argv=None) -> argparse.Namespace:
    on_spaces = bool(os.environ.get("SPACE_ID"))
    default_host = os.environ.get("V2DROP_HOST") or os.environ.get("GRADIO_SERVER_NAME") or (
        "0.0.0.0" if on_spaces else "127.0.0.1")
    default_port = int(os.environ.get("V2DROP_PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=default_host, help=f"interface to listen on (default {default_host}; "
                        "env V2DROP_HOST; 0.0.0.0 on Hugging Face Spaces)")
    parser.add_argument("--port", type=int, default=default_port, help="port (default 7860; env V2DROP_PORT)")
    parser.add_argument("--no-warm-up", action="store_true", help="skip the start-up warm-up run")
    parser.add_argument("--image-cap", default=os.environ.get("V2DROP_IMAGE_CAP", "auto"), choices=["auto", *CAPS],
                        help="image resolution for hub models (env V2DROP_IMAGE_CAP): full = the checkpoint's own; "
                             "base = one base-size tile (LLaVA-NeXT/OneVision) or 256 tokens (Qwen), for CPU hosts; "
                             "auto (default) = base on CPU, full on GPU")
    parser.add_argument("--cpu-dtype", default=os.environ.get("V2DROP_CPU_DTYPE", "auto"),
                        choices=["auto", "float32", "bfloat16"],
                        help="dtype of hub models on a CPU host (env V2DROP_CPU_DTYPE): auto (default) = bfloat16 "
                             "where the CPU has AMX / AVX512-BF16, else float32")
    parser.add_argument("--memory-budget", type=float, metavar="GB",
                        default=os.environ.get("V2DROP_MEMORY_BUDGET_GB") or None,
                        help="memory the models may use, in GB (env V2DROP_MEMORY_BUDGET_GB; default: the host's "
                             "limit, i.e. the cgroup's memory limit, else the available memory); a model whose "
                             "estimate does not fit is refused before it is downloaded and marked in the list")
    parser.add_argument("--benchmark", action="store_true", help="run the latency benchmark and exit "
                        "(same as python -m studio.perf)")
    parser.add_argument("--benchmark-sessions", type=int, default=None, metavar="N",
                        help="run the session-memory benchmark (N visitor sessions with image and video uploads "
                             "against a fresh app) and exit (same as python -m studio.soak --sessions N)")
    parser.add_argument("--json", default=None, help="with --benchmark / --benchmark-sessions: write the results here")
    add_arguments(parser)
    sessions = parser.add_argument_group("sessions (memory and disk bounds)")
    sessions.add_argument("--session-ttl", type=float, default=_env_number("V2DROP_SESSION_TTL", 1800),
                          help="seconds a session may stay idle before its state, uploads, frames and traces are "
                               "freed (env V2DROP_SESSION_TTL; default 1800)")
    sessions.add_argument("--max-sessions", type=int, default=int(_env_number("V2DROP_MAX_SESSIONS", 200)),
                          help="sessions kept at once; the least recently used is freed beyond that (env "
                               "V2DROP_MAX_SESSIONS; default 200)")
    sessions.add_argument("--frame-cache-mb", type=float, default=_env_number("V2DROP_FRAME_CACHE_MB", 256),
                          help="memory for decoded video frames across all sessions (env V2DROP_FRAME_CACHE_MB; "
                               "default 256)")
    args, rest = parser.parse_known_args(argv)
    if rest and not (args.benchmark or args.benchmark_sessions):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest  # with --benchmark: passed on to studio.perf (e.g. --repeats 1)
    return args


def make_studio(args: argparse.Namespace, policy: HostingPolicy) -> Studio:
    """The shared back end from the launch options."""
    budget = MemoryBudget.from_setting(getattr(args, "memory_budget", None))
    log.info(budget.describe())
    registry = ModelRegistry(max_extra=int(os.environ.get("V2DROP_MAX_MODELS", "1")), policy=policy,
                             image_cap=getattr(args, "image_cap", "auto"),
                             cpu_dtype=getattr(args, "cpu_dtype", "auto"), budget=budget)
    frames = FrameCache(max_bytes=int(args.frame_cache_mb * 1024 * 1024))
    root = Path(os.environ.get("V2DROP_SESSION_DIR") or DEFAULT_ROOT)
    sessions = SessionStore(root, idle_seconds=args.session_ttl, max_sessions=args.max_sessions,
                            on_release=lambda session: frames.drop_under(session.folder))
    return Studio(registry, sessions, frames, answer_tokens=int(os.environ.get("V2DROP_MAX_NEW_TOKENS", "48")))


def main(argv=None) -> None:
    args = parse_args(argv)
    transformers_logging.set_verbosity_error()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.benchmark:
        from studio import perf
        perf.main((["--json", args.json] if args.json else []) + args.rest)
        return
    if args.benchmark_sessions:
        from studio import soak
        soak.main(["--sessions", str(args.benchmark_sessions)] + (["--json", args.json] if args.json else [])
                  + args.rest)
        return
    policy = HostingPolicy.from_args(args, args.host)
    log.info(policy.describe())
    studio = make_studio(args, policy)
    demo = build_demo(studio, policy)
    if not args.no_warm_up and not zerogpu.active():  # on ZeroGPU, no model runs outside a GPU call
        warm_up(studio)
    print(f"V²Drop Studio on http://{args.host}:{args.port}", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_FILE_SIZE, show_error=False,
                ssr_mode=False, css=CSS, allowed_paths=[str(EXAMPLES_DIR), str(VIDEOS_DIR)], footer_links=["api"],
                state_session_capacity=args.max_sessions, enable_monitoring=policy.monitoring,
                app_kwargs={"middleware": [Middleware(EdgeGuard, events=event_inputs(demo))]})  # studio/edge.py


if __name__ == "__main__":
    main()
