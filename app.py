"""V²Drop Studio: chat with an LVLM and its V²Drop-pruned self side by side, and see which vision
tokens each layer dropped.

    python app.py                      # http://127.0.0.1:7860, embedded shapes model, no network
    python app.py --host 0.0.0.0 --port 8080
    python app.py --benchmark          # time to first tokens / full pair on the embedded model

Layout and event wiring only: model logic is in ``studio/chat.py``, drawing in ``visualize/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image
from transformers.utils import logging as transformers_logging

from studio.chat import (EMBEDDED_ID, MAX_VIDEO_FRAMES, SUGGESTED_MODELS, VIDEO_MODELS,
                         ChatInputError, ModelLoadError, ModelRegistry, check_prompt, check_video_model, image_region,
                         load_image, load_video_file, nominal_vision_tokens, presets_for, schedule_summary,
                         stream_pair)
from v2drop.schedule import DropSchedule
from v2drop.trace import Trace
from v2drop.video import SUPPORTED_EXTENSIONS, default_num_frames
from v2drop.video_inputs import frames_per_layout_frame, supports_video
from visualize import charts, overlay, story

try:  # Hugging Face ZeroGPU: run the model work on a GPU slice; a no-op everywhere else
    import spaces  # type: ignore

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - depends on the environment
    def gpu(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)

log = logging.getLogger("v2drop.app")
ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
VIDEOS_DIR = ROOT / "assets" / "videos"
TRACE_DIR = Path(tempfile.gettempdir()) / "v2drop-studio"
MAX_FILE_SIZE = "100mb"  # videos; images are decoded with their own pixel limits
MAX_NEW_TOKENS = int(os.environ.get("V2DROP_MAX_NEW_TOKENS", "48"))
REGISTRY = ModelRegistry(max_extra=int(os.environ.get("V2DROP_MAX_MODELS", "1")))
STREAM_INTERVAL = 0.08  # seconds between streamed chat updates
STRIP_PER_ROW = 4  # frame tiles per row of a video's strips
MODEL_LOCK = threading.Lock()  # belt and braces: the queue already runs one model job at a time


# ------------------------------------------------------------------------------------ state
def new_state() -> dict[str, Any]:
    return {"model_id": EMBEDDED_ID, "trust_remote_code": False, "schedule": "", "image": None,
            "image_src": None, "turns_full": [], "turns_drop": [], "trace": None, "stats": None,
            "region": None, "last_vision_tokens": None, "session": uuid.uuid4().hex[:12],
            # video: which input the chat is about ("image" / "video"), the sampled frames (DecodedVideo)
            "media": "image", "video": None, "video_src": None, "video_step": 1}


def _entry(state: dict):
    try:
        return REGISTRY.get(state.get("model_id"))
    except KeyError:  # evicted by another user's load: load it again
        return REGISTRY.load(state["model_id"], trust_remote_code=state.get("trust_remote_code", False))


def _messages(turns: list, pending: tuple[str, str] | None = None) -> list[dict[str, str]]:
    """Chatbot messages; an empty finished answer is shown as such, a pending one as '…'."""
    out = []
    for q, a in turns:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a or "(empty answer)"}]
    if pending:
        out += [{"role": "user", "content": pending[0]}, {"role": "assistant", "content": pending[1] or "…"}]
    return out


def _notice(text: str, kind: str = "info") -> str:
    icon = {"info": "ℹ️", "warn": "⚠️", "error": "❌", "ok": "✅"}[kind]
    return f"{icon} {text}" if text else ""


# ------------------------------------------------------------------------------------ schedule
def _preset_choices(entry) -> list[tuple[str, str]]:
    return [(f"{name} — {text} — {desc}", name) for name, text, desc in presets_for(entry.model, entry.is_embedded)]


def _preset_text(entry, name: str | None) -> str | None:
    for n, text, _ in presets_for(entry.model, entry.is_embedded):
        if n == name:
            return text
    return None


def _check_schedule(text: str, entry, state: dict) -> tuple[DropSchedule | None, str]:
    """(schedule, markdown): the schedule and its budget, or None and why it cannot run."""
    try:
        schedule = DropSchedule.parse(text or "")
        if not schedule.stages:
            raise ValueError("the schedule is empty: give at least one 'layer:keep_ratio' stage, e.g. '2:0.5'")
        summary = schedule_summary(schedule, entry.model,
                                   nominal_vision_tokens(entry.model, state.get("last_vision_tokens")))
        return schedule, story.schedule_text(summary)
    except ValueError as err:
        return None, story.schedule_text(None, error=str(err))


def on_preset(name: str, state: dict):
    entry = _entry(state)
    text = _preset_text(entry, name) or state.get("schedule") or ""
    state["schedule"] = text
    return text, _check_schedule(text, entry, state)[1], state


def on_schedule_edit(text: str, state: dict):
    state["schedule"] = text or ""
    return _check_schedule(text, _entry(state), state)[1], state


# ------------------------------------------------------------------------------------ model
def _model_info(entry) -> str:
    lines = [f"**{entry.label}**", f"{entry.num_layers} decoder layers · "
             f"{getattr(entry.model.config, 'model_type', '?')} · device {REGISTRY.device}"]
    lines.append("🎞️ takes video" if supports_video(entry.model) else
                 f"🖼️ images only (video models: {VIDEO_MODELS})")
    if entry.note:
        lines.append(f"⚠️ {entry.note}")
    return "\n\n".join(lines)


def on_load_model(model_id: str, trust: bool, state: dict, progress=gr.Progress()):
    """Load a model for this session; on failure keep the current one and say why."""
    model_id = (model_id or "").strip() or EMBEDDED_ID
    current = state.get("model_id") or EMBEDDED_ID
    try:
        with MODEL_LOCK:
            entry = REGISTRY.load(model_id, trust_remote_code=bool(trust),
                                  progress=lambda f, m: progress(f, desc=m))
    except ModelLoadError as err:
        entry = _entry(state)
        return (gr.Dropdown(value=current), _model_info(entry), gr.skip(), gr.skip(), gr.skip(),
                _notice(f"{err} The current model ({current}) stays loaded.", "error"), state, gr.skip())
    state.update(model_id=entry.model_id, trust_remote_code=bool(trust), turns_full=[], turns_drop=[],
                 trace=None, stats=None, last_vision_tokens=None)
    presets = _preset_choices(entry)
    first = presets[0][1]
    text = _preset_text(entry, first)
    state["schedule"] = text
    loaded = f"Loaded {entry.model_id}. The chat was cleared."
    if state.get("media") == "video" and not supports_video(entry.model):
        loaded += f" It takes no video: switch to an image, or load a video model ({VIDEO_MODELS})."
    return (gr.Dropdown(value=entry.model_id), _model_info(entry), gr.Dropdown(choices=presets, value=first), text,
            _check_schedule(text, entry, state)[1], _notice(loaded, "ok"), state,
            default_num_frames(entry.model))


# ------------------------------------------------------------------------------------ image
def on_image(path: str | None, state: dict):
    """Validate an upload, show it, and start a new conversation about it."""
    state.update(turns_full=[], turns_drop=[], trace=None, stats=None)
    if not path:
        state.update(image=None, image_src=None)
        return None, [], [], "", state
    try:
        image, notes = load_image(path)
    except ChatInputError as err:
        state.update(image=None, image_src=None)
        return None, [], [], _notice(str(err), "error"), state
    saved = _save_image(image, state)
    state.update(image=saved, image_src=path, media="image")
    text = " ".join(notes) + (" " if notes else "") + "New image: a new conversation starts."
    return saved, [], [], _notice(text, "warn" if notes else "info"), state


def _save_image(image: Image.Image, state: dict) -> str:
    TRACE_DIR.mkdir(parents=True, exist_ok=True)
    path = TRACE_DIR / f"image-{state['session']}-{uuid.uuid4().hex[:6]}.png"
    image.save(path)
    return str(path)


# ------------------------------------------------------------------------------------ video
def on_video(path: str | None, num_frames: float, state: dict):
    """Decode an uploaded video (or the same one at a new frame count), preview the sampled frames,
    and start a new conversation about it. Says so at once if the current model takes no video."""
    if not path:
        state.update(video=None, video_src=None)
        return None, gr.skip(), gr.skip(), gr.skip(), state
    state.update(turns_full=[], turns_drop=[], trace=None, stats=None)
    try:
        video = load_video_file(path, num_frames)
    except ChatInputError as err:
        state.update(video=None, video_src=None)
        return None, [], [], _notice(str(err), "error"), state
    state.update(video=video, video_src=path, media="video")
    text = (f"New video: {len(video)} frames sampled of {video.total_frames} ({video.duration:.1f} s, "
            f"{video.width}×{video.height}). A new conversation starts.")
    kind = "info"
    try:
        check_video_model(_entry(state).model, state.get("model_id"))
    except ChatInputError as err:
        text, kind = f"{err}", "warn"
    return (overlay.contact_sheet(video.frames, video.timestamps, size=160, per_row=STRIP_PER_ROW), [], [],
            _notice(text, kind), state)


def on_media_tab(media: str, state: dict):
    """Switching between the Image and Video tabs switches what the chat is about."""
    if state.get("media") == media:
        return gr.skip(), gr.skip(), gr.skip(), state
    state.update(media=media, turns_full=[], turns_drop=[], trace=None, stats=None)
    has = state.get("image") if media == "image" else state.get("video")
    text = f"Now asking about the {media}: a new conversation starts." if has else \
        f"Upload {'an image' if media == 'image' else 'a video'} (or pick an example) to ask about it."
    return [], [], _notice(text), state


def on_video_example(name: str | None):
    if not name or not (VIDEOS_DIR / name).exists():
        return gr.skip(), gr.skip()
    return str(VIDEOS_DIR / name), VIDEO_EXAMPLES.get(name, {}).get("question", gr.skip())


def _load_video_examples() -> dict:
    try:
        return json.loads((VIDEOS_DIR / "examples.json").read_text())
    except (OSError, ValueError):
        return {}


VIDEO_EXAMPLES = _load_video_examples()


# ------------------------------------------------------------------------------------ chat
def _visuals(state: dict, layer: int | None = None) -> tuple:
    """Everything drawn from the session's last run: slider, drop-layer picker, overlays, charts,
    table, story, trace file."""
    trace_dict, stats = state.get("trace"), state.get("stats")
    if not trace_dict or not _has_media(state):
        return (gr.Slider(), gr.Dropdown(), None, None, None, None, None, None, None, story.how_it_works(), None, None)
    trace = Trace.from_dict(trace_dict)
    sample = trace.samples[0]
    layer = max(sample.kept) if layer is None and sample.kept else (layer or 0)
    drops = sorted(sample.kept)
    first_drop = drops[0] if drops else None
    kept_img, heat_img = _layer_images(state, sample, layer)
    dropped_img = _dropped_image(state, sample, first_drop) if first_drop is not None else None
    timeline = None
    if state.get("media") == "video":
        video = state["video"]
        timeline = charts.frame_timeline(trace, step=state.get("video_step", 1), timestamps=video.timestamps,
                                         num_frames=len(video))
    path = TRACE_DIR / f"trace-{state['session']}.json"
    path.write_text(json.dumps(trace_dict, indent=1))
    return (gr.Slider(minimum=0, maximum=trace.num_layers - 1, value=layer, step=1),
            gr.Dropdown(choices=[(f"layer {d}", d) for d in drops], value=first_drop),
            kept_img, heat_img, dropped_img,
            charts.performance_chart(stats["full"], stats["drop"]), charts.alive_chart(trace),
            charts.metrics_rows(stats["full"], stats["drop"]), charts.retention_chart([sample]),
            story.how_it_works() + "\n\n" + story.run_story(trace), str(path), timeline)


def _has_media(state: dict) -> bool:
    return bool(state.get("video") if state.get("media") == "video" else state.get("image"))


def _draw(state: dict, sample, layer: int, mode: str):
    """One overlay of the last run: on the image, or (video) a strip of its sampled frames."""
    if state.get("media") == "video":
        video = state["video"]
        return overlay.frame_strip(video.frames, sample, layer, mode, step=state.get("video_step", 1),
                                   timestamps=video.timestamps, per_row=STRIP_PER_ROW)
    image = Image.open(state["image"]).convert("RGB")
    draw = {"kept": overlay.kept_overlay, "dropped": overlay.dropped_overlay,
            "variation": overlay.variation_heatmap}[mode]
    return draw(image, sample, layer, state.get("region"))


def _layer_images(state: dict, sample, layer: int) -> tuple:
    kept_img = _draw(state, sample, layer, "kept")
    try:
        heat_img = _draw(state, sample, layer, "variation")
    except ValueError:
        heat_img = None
    return kept_img, heat_img


def _dropped_image(state: dict, sample, layer: int):
    return _draw(state, sample, layer, "dropped")


N_VISUALS = 12


@gpu
def chat(question: str, image_file: str | None, state: dict):
    """One turn: stream both answers into the two panes, then draw the run. Bad input gets a
    message in the notice line and changes nothing else."""
    state = state or new_state()
    skip = (gr.skip(),) * N_VISUALS
    full_msgs, drop_msgs = _messages(state["turns_full"]), _messages(state["turns_drop"])
    try:
        question = check_prompt(question)
        if image_file and image_file != state.get("image_src"):  # an API call that brings its image
            image, notes = load_image(image_file)
            state.update(image=_save_image(image, state), image_src=image_file, turns_full=[], turns_drop=[],
                         media="image")
            full_msgs, drop_msgs = [], []
        entry = _entry(state)
        if state.get("media") == "video":
            if state.get("video") is None:
                raise ChatInputError("No video: upload a video (or pick an example video) before asking a question.")
            check_video_model(entry.model, entry.model_id)
            image, notes = state["video"], []
        else:
            if not state.get("image"):
                raise ChatInputError("No image: upload an image (or pick an example) before asking a question.")
            image, notes = load_image(state["image"])
        schedule, why = _check_schedule(state.get("schedule") or "", entry, state)
        if schedule is None:
            raise ChatInputError(why.replace("⚠️ ", "").replace("**", ""))
    except (ChatInputError, ModelLoadError) as err:
        yield (full_msgs, drop_msgs, _notice(str(err), "error"), state, gr.skip()) + skip
        return

    turns_full, turns_drop = list(state["turns_full"]), list(state["turns_drop"])
    yield (_messages(turns_full, (question, "")), _messages(turns_drop, (question, "")),
           _notice("Generating (unpruned and V²Drop, interleaved)…"), state, "") + skip
    event, last_yield = None, 0.0
    try:
        with MODEL_LOCK:
            for event in stream_pair(entry.model, entry.processor, image, question, turns_full, turns_drop,
                                     schedule, max_new_tokens=MAX_NEW_TOKENS):
                if event.trace is not None:  # the final event
                    break
                now = time.monotonic()
                first = (event.full.tokens, event.drop.tokens) in ((1, 0), (1, 1))  # first tokens: show at once
                if not first and now - last_yield < STREAM_INTERVAL:
                    continue  # coalesce updates: each one costs a round trip to every browser
                last_yield = now
                yield (_messages(turns_full, (question, event.full_text)),
                       _messages(turns_drop, (question, event.drop_text)), gr.skip(), state, gr.skip()) + skip
    except Exception as err:  # noqa: BLE001 - the page gets a message, the log the traceback
        log.error("generation failed:\n%s", traceback.format_exc())
        yield (full_msgs, drop_msgs, _notice(f"Generation failed ({type(err).__name__}: {err}). The app is still "
                                             "running; try another image or video, question or schedule.", "error"),
               state, question) + skip
        return
    state["turns_full"] = turns_full + [(question, event.full_text)]
    state["turns_drop"] = turns_drop + [(question, event.drop_text)]
    state["trace"] = event.trace.to_dict()
    state["stats"] = {"full": event.full.to_dict(), "drop": event.drop.to_dict(), "schedule": str(schedule),
                      "model_id": entry.model_id}
    if state.get("media") == "video":
        state["region"], state["video_step"] = None, frames_per_layout_frame(entry.model)
    else:
        state["region"] = image_region(entry.processor, image.size)
    state["last_vision_tokens"] = event.trace.samples[0].num_vision_tokens if event.trace.samples else None
    f, d = event.full, event.drop
    done = (f"Done with `{schedule}` on {entry.model_id}: first tokens after {f.first_token_seconds * 1e3:.0f} ms "
            f"(unpruned) / {d.first_token_seconds * 1e3:.0f} ms (V²Drop); prefill {f.prefill_seconds * 1e3:.0f} → "
            f"{d.prefill_seconds * 1e3:.0f} ms.")
    if notes:
        done = " ".join(notes) + " " + done
    if not entry.trained:
        done += " (The embedded model is untrained: its answers are meaningless.)"
    yield (_messages(state["turns_full"]), _messages(state["turns_drop"]), _notice(done, "ok"), state,
           gr.skip()) + _visuals(state)


def on_layer(layer: float, state: dict):
    trace_dict = state.get("trace")
    if not trace_dict or not _has_media(state):
        return None, None, ""
    sample = Trace.from_dict(trace_dict).samples[0]
    layer = int(layer)
    kept_img, heat_img = _layer_images(state, sample, layer)
    alive, dropped_now = overlay.layer_status(sample, layer)
    caption = f"Layer {layer}: {len(alive)} of {sample.num_vision_tokens} vision tokens alive"
    if dropped_now:
        caption += f"; **{len(dropped_now)} dropped right before this layer** (red)"
    if heat_img is None:
        caption += " · no variation at layer 0 (no previous layer to compare with)"
    return kept_img, heat_img, caption


def on_drop_layer(layer, state: dict):
    trace_dict = state.get("trace")
    if not trace_dict or layer is None or not _has_media(state):
        return None
    sample = Trace.from_dict(trace_dict).samples[0]
    if int(layer) not in sample.kept:
        return None
    return _dropped_image(state, sample, int(layer))


def on_tick(layer: float, state: dict):
    trace_dict = state.get("trace")
    if not trace_dict:
        return gr.skip(), gr.Timer(active=False), "▶ Play"
    last = trace_dict["num_layers"] - 1
    nxt = int(layer) + 1
    if nxt >= last:
        return last, gr.Timer(active=False), "▶ Play"
    return nxt, gr.Timer(active=True), "⏸ Pause"


def on_play(label: str, layer: float, state: dict):
    if not state.get("trace"):
        return gr.skip(), gr.Timer(active=False), "▶ Play"
    if label.startswith("⏸"):
        return gr.skip(), gr.Timer(active=False), "▶ Play"
    last = state["trace"]["num_layers"] - 1
    return (0 if int(layer) >= last else gr.skip()), gr.Timer(active=True), "⏸ Pause"


def on_example(state: dict, evt: gr.SelectData):
    """A gallery click: put the example image in the upload box (which starts a new chat) and its
    question in the text box."""
    shown = [(f, q) for f, q in EXAMPLES if (EXAMPLES_DIR / f).exists()]
    name, question = shown[evt.index]
    return str(EXAMPLES_DIR / name), question


def on_clear(state: dict):
    state.update(turns_full=[], turns_drop=[], trace=None, stats=None)
    return [], [], _notice("Chat cleared."), state


# ------------------------------------------------------------------------------------ layout
CSS = """
#notice {min-height: 1.5em}
.pane-title {text-align:center; font-weight:600}
"""

EXAMPLES = [
    ["shapes_0_color.png", "what color is the star ?"],
    ["shapes_1_count.png", "how many squares are there ?"],
    ["shapes_2_position.png", "is the white star on the right or the left ?"],
    ["shapes_3_exist.png", "is there a purple star ?"],
    ["shapes_5_count.png", "how many triangles are there ?"],
    ["astronaut.png", "What is the person wearing?"],
    ["chelsea.png", "What animal is this, and what colour is it?"],
    ["coffee.png", "What is in the cup?"],
]


def build_demo() -> gr.Blocks:
    embedded = REGISTRY.embedded()
    presets = _preset_choices(embedded)
    default_preset = presets[0][1]
    default_text = _preset_text(embedded, default_preset)
    state0 = new_state()
    state0["schedule"] = default_text
    _, schedule_md0 = _check_schedule(default_text, embedded, state0)

    with gr.Blocks(title="V²Drop Studio", analytics_enabled=False) as demo:
        state = gr.State(state0)
        gr.Markdown("# V²Drop Studio\nAsk a question about an image (or a video, with a video model); the **unpruned** model and the same model "
                    "with **V²Drop** (variation-aware vision-token dropping) answer side by side. Then look at "
                    "which image patches each layer dropped.")
        notice = gr.Markdown(_notice(embedded.note, "warn") if embedded.note else "", elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                with gr.Accordion("Model", open=True):
                    model_dd = gr.Dropdown(choices=[EMBEDDED_ID, *SUGGESTED_MODELS], value=EMBEDDED_ID,
                                           allow_custom_value=True, label="Model (pick or type a hub id / folder)",
                                           elem_id="model-id")
                    trust = gr.Checkbox(False, label="trust remote code (runs code from the model's repository)")
                    load_btn = gr.Button("Load model", size="sm")
                    model_md = gr.Markdown(_model_info(embedded))
                with gr.Accordion("Drop schedule", open=True):
                    preset_dd = gr.Dropdown(choices=presets, value=default_preset, label="Preset")
                    schedule_tb = gr.Textbox(default_text, label="Drop layers and keep ratios (layer:keep_ratio, …)",
                                             info="keep_ratio = the share of the still-alive vision tokens kept "
                                                  "at that layer (0-based decoder layer; ratios compound)",
                                             elem_id="schedule")
                    schedule_md = gr.Markdown(schedule_md0, elem_id="schedule-info")
                with gr.Tabs():
                    with gr.Tab("Image", elem_id="image-tab") as image_tab:
                        image_file = gr.File(label="Image (upload)", file_types=["image"], type="filepath",
                                             elem_id="image-upload")
                        preview = gr.Image(label="Image", interactive=False, height=220, elem_id="preview")
                    with gr.Tab("Video", elem_id="video-tab") as video_tab:
                        gr.Markdown(f"Video models only: {VIDEO_MODELS}. Frames are sampled uniformly; "
                                    "V²Drop ranks the tokens of all frames together.")
                        video_file = gr.File(label="Video (upload mp4, webm, mov, gif, …)", type="filepath",
                                             file_types=list(SUPPORTED_EXTENSIONS), elem_id="video-upload")
                        frames_sl = gr.Slider(1, MAX_VIDEO_FRAMES, value=default_num_frames(embedded.model), step=1,
                                              label="Frames sampled from the video", elem_id="num-frames")
                        video_example = gr.Dropdown(
                            choices=[(f"{name} — {v.get('description', '')}", name) for name, v in
                                     VIDEO_EXAMPLES.items() if (VIDEOS_DIR / name).exists()],
                            value=None, label="Example videos", elem_id="video-examples")
                        video_preview = gr.Image(label="Sampled frames (what the model sees)", interactive=False,
                                                 elem_id="video-preview", format="png")
            with gr.Column(scale=3):
                with gr.Row():
                    chat_full = gr.Chatbot(label="Unpruned", height=300, elem_id="chat-full")
                    chat_drop = gr.Chatbot(label="V²Drop", height=300, elem_id="chat-drop")
                with gr.Row():
                    question = gr.Textbox(placeholder="Ask about the image, e.g. 'what color is the star ?'",
                                          show_label=False, scale=5, max_lines=4, elem_id="question")
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                    clear = gr.Button("Clear chat", scale=1)
                with gr.Tabs():
                    with gr.Tab("Patches per layer"):
                        with gr.Row():
                            layer_sl = gr.Slider(0, embedded.num_layers - 1, value=0, step=1,
                                                 label="Decoder layer", scale=5, elem_id="layer")
                            play = gr.Button("▶ Play", scale=1, size="sm")
                        layer_md = gr.Markdown()
                        with gr.Row():
                            kept_img = gr.Image(label="Kept (clear) vs dropped (dark; red = dropped at this layer)",
                                                interactive=False, elem_id="kept-overlay", format="png")
                            heat_img = gr.Image(label="Variation ‖h_l − h_(l−1)‖₂ (bright = changes most)",
                                                interactive=False, elem_id="heatmap", format="png")
                        with gr.Row():
                            drop_dd = gr.Dropdown(label="Which patches went at drop layer…", choices=[],
                                                  scale=1)
                            dropped_img = gr.Image(label="Dropped at that layer (red)", interactive=False, scale=2,
                                                   format="png", height=360)
                        timeline_plot = gr.Plot(label="Video: kept tokens per frame and layer",
                                                elem_id="frame-timeline")
                    with gr.Tab("Performance"):
                        perf_plot = gr.Plot(label="Latency and memory", elem_id="perf-chart")
                        alive_plot = gr.Plot(label="Vision tokens alive per layer", elem_id="alive-chart")
                        table = gr.Dataframe(headers=charts.METRIC_HEADERS, label="Numbers", interactive=False)
                        retention_plot = gr.Plot(label="Retention by position (paper Fig. 2)")
                        trace_file = gr.File(label="This run's trace (JSON)", interactive=False)
                    with gr.Tab("How it works"):
                        story_md = gr.Markdown(story.how_it_works(), elem_id="story")
                examples = [(str(EXAMPLES_DIR / f), q) for f, q in EXAMPLES if (EXAMPLES_DIR / f).exists()]
                gallery = gr.Gallery([(f, q) for f, q in examples], label="Example gallery: click one (shapes "
                                     "scenes suit the embedded model; photos suit hub models)", columns=8, height=170,
                                     allow_preview=False, elem_id="gallery")
        timer = gr.Timer(0.9, active=False)

        visual_outputs = [layer_sl, drop_dd, kept_img, heat_img, dropped_img, perf_plot, alive_plot, table,
                          retention_plot, story_md, trace_file, timeline_plot]
        chat_outputs = [chat_full, chat_drop, notice, state, question] + visual_outputs
        model_job = dict(concurrency_limit=1, concurrency_id="model")
        # one event for both triggers, so a second click/Enter while this session's turn runs is ignored
        gr.on([send.click, question.submit], chat, [question, image_file, state], chat_outputs, api_name="chat",
              trigger_mode="once", **model_job)
        clear.click(on_clear, [state], [chat_full, chat_drop, notice, state], api_name="clear")
        image_file.change(on_image, [image_file, state], [preview, chat_full, chat_drop, notice, state],
                          api_name="set_image")
        video_file.change(on_video, [video_file, frames_sl, state], [video_preview, chat_full, chat_drop, notice, state],
                          api_name="set_video")
        # also fires when loading a model sets its default frame count: the video is sampled again
        frames_sl.change(on_video, [video_file, frames_sl, state], [video_preview, chat_full, chat_drop, notice, state],
                         api_visibility="private", trigger_mode="always_last")
        video_example.input(on_video_example, [video_example], [video_file, question], api_visibility="private")
        image_tab.select(lambda s: on_media_tab("image", s), [state], [chat_full, chat_drop, notice, state],
                         api_visibility="private")
        video_tab.select(lambda s: on_media_tab("video", s), [state], [chat_full, chat_drop, notice, state],
                         api_visibility="private")
        preset_dd.input(on_preset, [preset_dd, state], [schedule_tb, schedule_md, state], api_name="set_preset")
        schedule_tb.change(on_schedule_edit, [schedule_tb, state], [schedule_md, state], api_name="set_schedule")
        load_btn.click(on_load_model, [model_dd, trust, state],
                       [model_dd, model_md, preset_dd, schedule_tb, schedule_md, notice, state, frames_sl],
                       api_name="load_model", **model_job)
        layer_sl.change(on_layer, [layer_sl, state], [kept_img, heat_img, layer_md], api_visibility="private",
                        trigger_mode="always_last")
        drop_dd.input(on_drop_layer, [drop_dd, state], [dropped_img], api_visibility="private")
        play.click(on_play, [play, layer_sl, state], [layer_sl, timer, play], api_visibility="private")
        gallery.select(on_example, [state], [image_file, question], api_visibility="private")
        timer.tick(on_tick, [layer_sl, state], [layer_sl, timer, play], api_visibility="private")
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo


def warm_up() -> None:
    """One short run so that the first user does not pay for lazy initialisation."""
    try:
        entry = REGISTRY.embedded()
        image, _ = load_image(EXAMPLES_DIR / "shapes_0_color.png")
        for _ in stream_pair(entry.model, entry.processor, image, "what color is the star ?", [], [],
                             DropSchedule.parse(_preset_text(entry, _preset_choices(entry)[0][1])), max_new_tokens=2):
            pass
    except Exception:  # noqa: BLE001 - warm-up is best effort
        log.warning("warm-up failed:\n%s", traceback.format_exc())


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
    parser.add_argument("--benchmark", action="store_true", help="run the latency benchmark and exit "
                        "(same as python -m studio.perf)")
    parser.add_argument("--json", default=None, help="with --benchmark: write the results here")
    args, rest = parser.parse_known_args(argv)
    if rest and not args.benchmark:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest  # with --benchmark: passed on to studio.perf (e.g. --repeats 1)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    transformers_logging.set_verbosity_error()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.benchmark:
        from studio import perf
        perf.main((["--json", args.json] if args.json else []) + args.rest)
        return
    demo = build_demo()
    if not args.no_warm_up:
        warm_up()
    print(f"V²Drop Studio on http://{args.host}:{args.port}", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_FILE_SIZE, show_error=False,
                ssr_mode=False, css=CSS, allowed_paths=[str(TRACE_DIR), str(EXAMPLES_DIR), str(VIDEOS_DIR)], footer_links=["api"])


if __name__ == "__main__":
    main()
