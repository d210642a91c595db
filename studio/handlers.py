"""The page's event handlers: what each click, upload and edit does to one visitor's session.

:class:`Studio` holds everything the handlers share (the model registry, the session store, the
frame cache); each visitor's own state is a :class:`~studio.state.PageState` that Gradio keeps per
session. Handlers get the visitor's ``gr.Request``, so files are always written to that session's
own folder. Messages for the page never carry a server path or an exception class name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from PIL import Image

from studio.image_cap import image_caption
from studio.inputs import ChatInputError, check_prompt, check_special_tokens, image_region, load_image
from studio.pair import PairEvent, stream_pair
from studio.registry import EMBEDDED_ID, LoadedModel, ModelCard, ModelLoadError, ModelRegistry
from studio.schedules import nominal_vision_tokens, presets_for, schedule_summary
from studio.sessions import FrameCache, Session, SessionStore
from studio.state import PageState
from studio.videos import VIDEO_MODELS, check_num_frames, check_video_model, load_video_file
from studio.views import Media, Visuals, dropped_image, layer_caption, layer_images, run_visuals
from v2drop.schedule import DropSchedule
from v2drop.trace import Trace
from v2drop.video import DecodedVideo
from v2drop.video_inputs import frames_per_layout_frame, supports_video
from visualize import overlay, story

__all__ = ["Studio", "notice", "messages"]

log = logging.getLogger("v2drop.app")
STREAM_INTERVAL = 0.08  # seconds between streamed chat updates


def notice(text: str, kind: str = "info") -> str:
    icon = {"info": "ℹ️", "warn": "⚠️", "error": "❌", "ok": "✅"}[kind]
    return f"{icon} {text}" if text else ""


def messages(turns: list, pending: tuple[str, str] | None = None) -> list[dict[str, str]]:
    """Chatbot messages; an empty finished answer is shown as such, a pending one as '…'."""
    out = []
    for q, a in turns:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a or "(empty answer)"}]
    if pending:
        out += [{"role": "user", "content": pending[0]}, {"role": "assistant", "content": pending[1] or "…"}]
    return out


@dataclass
class Turn:
    """One checked chat turn, ready to run."""

    entry: LoadedModel
    question: str
    schedule: DropSchedule
    media: Media
    model_input: Image.Image | DecodedVideo
    notes: list[str]


class Studio:
    """The shared back end of the page and its event handlers."""

    def __init__(self, registry: ModelRegistry, sessions: SessionStore, frames: FrameCache,
                 answer_tokens: int = 48) -> None:
        self.registry = registry
        self.sessions = sessions
        self.frames = frames
        self.answer_tokens = answer_tokens
        self._model_lock = threading.Lock()  # belt and braces: the queue already runs one model job at a time

    # ------------------------------------------------------------------------ sessions
    def initial_state(self) -> PageState:
        """A new visitor's state: the embedded model and its first preset."""
        card = self.registry.card(EMBEDDED_ID)
        return PageState(schedule=self.first_schedule(card)[1], num_frames=card.default_frames)

    def session(self, state: PageState, request: gr.Request | None) -> Session:
        """This visitor's session (its own folder), marked as used now."""
        key = getattr(request, "session_hash", None) or state.session_key or "local"
        state.session_key = key
        return self.sessions.open(key)

    def on_unload(self, request: gr.Request) -> None:
        """The tab was closed: free the session's files and frames at once."""
        self.sessions.release(getattr(request, "session_hash", None))

    def on_state_deleted(self, state: Any) -> None:
        """Gradio dropped an idle session's state: free its files and frames too."""
        self.sessions.release(getattr(state, "session_key", None))

    def forget_frames(self, session: Session) -> None:
        self.frames.drop_under(session.folder)

    # ------------------------------------------------------------------------ schedule
    @staticmethod
    def preset_choices(card: ModelCard) -> list[tuple[str, str]]:
        return [(f"{name} — {text} — {desc}", name) for name, text, desc in presets_for(card, card.is_embedded)]

    @staticmethod
    def first_schedule(card: ModelCard) -> tuple[str, str]:
        """(preset name, schedule text) of the first preset that this model accepts."""
        presets = presets_for(card, card.is_embedded)
        for name, text, _ in presets:
            try:
                DropSchedule.parse(text).validate(card.num_layers)
                return name, text
            except ValueError:
                continue
        layer = max(1, card.num_layers // 2)
        return presets[0][0] if presets else "", f"{layer}:0.5"

    @staticmethod
    def check_schedule(text: str, card: ModelCard, state: PageState) -> tuple[DropSchedule | None, str]:
        """(schedule, markdown): the schedule and its budget, or None and why it cannot run."""
        try:
            schedule = DropSchedule.parse(text or "")
            if not schedule.stages:
                raise ValueError("the schedule is empty: give at least one 'layer:keep_ratio' stage, e.g. '2:0.5'")
            summary = schedule_summary(schedule, card, nominal_vision_tokens(card, state.last_vision_tokens))
            return schedule, story.schedule_text(summary)
        except ValueError as err:
            return None, story.schedule_text(None, error=str(err))

    def _card(self, state: PageState) -> ModelCard:
        try:
            return self.registry.card(state.model_id)
        except KeyError:  # a model loaded long ago and forgotten: fall back to the embedded one
            state.model_id = EMBEDDED_ID
            return self.registry.card(EMBEDDED_ID)

    def on_preset(self, name: str, state: PageState):
        card = self._card(state)
        text = next((t for n, t, _ in presets_for(card, card.is_embedded) if n == name), None) or state.schedule
        state.schedule = text
        return text, self.check_schedule(text, card, state)[1], state

    def on_schedule_edit(self, text: str, state: PageState):
        state.schedule = text or ""
        return self.check_schedule(text, self._card(state), state)[1], state

    # ------------------------------------------------------------------------ model
    def model_info(self, card: ModelCard) -> str:
        lines = [f"**{card.label}**", f"{card.num_layers} decoder layers · "
                 f"{getattr(card.config, 'model_type', '?')} · device {self.registry.device}"]
        lines.append("🎞️ takes video" if supports_video(card) else f"🖼️ images only (video models: {VIDEO_MODELS})")
        if card.image_cap:
            lines.append(f"📐 image cap: {card.image_cap}")
        if card.note:
            lines.append(f"⚠️ {card.note}")
        return "\n\n".join(lines)

    def on_switch_model(self, model_id: str, trust: bool, state: PageState, progress=gr.Progress()):
        """Load a model for this session (the operator's policy decides what may be loaded); on
        failure keep the current one and say why. A load clears the chat, overlays and charts."""
        model_id = (model_id or "").strip() or EMBEDDED_ID
        try:
            entry = self.registry.load(model_id, trust_remote_code=bool(trust),
                                       progress=lambda f, m: progress(f, desc=m))
        except ModelLoadError as err:
            current = self._card(state)
            return (gr.Dropdown(value=current.model_id), self.model_info(current), gr.skip(), gr.skip(), gr.skip(),
                    notice(f"{err} The current model ({current.model_id}) stays loaded.", "error"), state,
                    gr.skip(), gr.skip(), gr.skip(), *Visuals.unchanged().values())
        card = self.registry.card(entry.model_id)
        state.model_id, state.trust_remote_code = entry.model_id, bool(trust)
        state.new_chat()
        state.last_vision_tokens = None
        first, text = self.first_schedule(card)
        state.schedule = text
        loaded = f"Loaded {entry.model_id}. The chat was cleared."
        if state.media == "video" and not supports_video(card):
            loaded += f" It takes no video: switch to an image, or load a video model ({VIDEO_MODELS})."
        return (gr.Dropdown(value=entry.model_id), self.model_info(card),
                gr.Dropdown(choices=self.preset_choices(card), value=first), text,
                self.check_schedule(text, card, state)[1], notice(loaded, "ok"), state, card.default_frames,
                [], [], *Visuals.cleared().values())

    # ------------------------------------------------------------------------ image
    def _take_image(self, path: str, state: PageState, session: Session) -> list[str]:
        """Decode an upload, keep a PNG copy in the session's folder, start a new chat about it."""
        image, notes = load_image(path)
        saved = self.sessions.new_file(session.key, "image", ".png")
        image.save(saved)
        _remove(state.image)
        state.image, state.image_src, state.media = str(saved), path, "image"
        state.new_chat()
        return notes

    def on_image(self, path: str | None, state: PageState, request: gr.Request):
        """Validate an upload, show it, and start a new conversation about it."""
        session = self.session(state, request)
        state.new_chat()
        if not path:
            _remove(state.image)
            state.image = state.image_src = None
            return None, [], [], "", state
        try:
            notes = self._take_image(path, state, session)
        except ChatInputError as err:
            state.image = state.image_src = None
            return None, [], [], notice(str(err), "error"), state
        text = " ".join(notes) + (" " if notes else "") + "New image: a new conversation starts."
        return state.image, [], [], notice(text, "warn" if notes else "info"), state

    def image_info(self, state: PageState) -> str:
        """The line under the image: its vision-token count for the current model under the
        operator's image cap (empty without an image, or when the model was evicted)."""
        if not state.image:
            return ""
        try:
            entry = self.registry.get(state.model_id)
            with Image.open(state.image) as image:
                return image_caption(entry, image.convert("RGB"))
        except (KeyError, OSError, ValueError):
            return ""

    # ------------------------------------------------------------------------ video
    def _video_frames(self, state: PageState) -> DecodedVideo:
        return self.frames.get(state.video, state.num_frames, load_video_file)

    def _take_video(self, path: str, num_frames: float, state: PageState, session: Session) -> DecodedVideo:
        """The session's own copy of the upload (so that its frames can be decoded again after the
        frame cache let them go), decoded at ``num_frames``."""
        if path != state.video_src or not state.video or not Path(state.video).exists():
            copy = self.sessions.new_file(session.key, "video", Path(path).suffix.lower()[:8])
            _link_or_copy(Path(path), copy)
            self.forget_frames(session)
            _remove(state.video)
            state.video, state.video_src = str(copy), path
        state.num_frames = check_num_frames(num_frames)
        return self._video_frames(state)

    def on_video(self, path: str | None, num_frames: float, state: PageState, request: gr.Request):
        """Decode an uploaded video (or the same one at a new frame count), preview the sampled frames,
        and start a new conversation about it. Says so at once if the current model takes no video."""
        session = self.session(state, request)
        if not path:
            self.forget_frames(session)
            _remove(state.video)
            state.video = state.video_src = None
            return None, gr.skip(), gr.skip(), gr.skip(), state
        state.new_chat()
        try:
            video = self._take_video(path, num_frames, state, session)
        except (ChatInputError, OSError) as err:
            _remove(state.video)
            state.video = state.video_src = None
            reason = str(err) if isinstance(err, ChatInputError) else "The video could not be stored; upload it again."
            return None, [], [], notice(reason, "error"), state
        state.media = "video"
        text = (f"New video: {len(video)} frames sampled of {video.total_frames} ({video.duration:.1f} s, "
                f"{video.width}×{video.height}). A new conversation starts.")
        kind = "info"
        try:
            check_video_model(self._card(state), state.model_id)
        except ChatInputError as err:
            text, kind = f"{err}", "warn"
        sheet = overlay.contact_sheet(video.frames, video.timestamps, size=160, per_row=4)
        return sheet, [], [], notice(text, kind), state

    def on_media_tab(self, media: str, state: PageState):
        """Switching between the Image and Video tabs switches what the chat is about."""
        if state.media == media:
            return gr.skip(), gr.skip(), gr.skip(), state
        state.media = media
        state.new_chat()
        has = state.image if media == "image" else state.video
        text = f"Now asking about the {media}: a new conversation starts." if has else \
            f"Upload {'an image' if media == 'image' else 'a video'} (or pick an example) to ask about it."
        return [], [], notice(text), state

    def on_clear(self, state: PageState):
        state.new_chat()
        return [], [], notice("Chat cleared."), state

    # ------------------------------------------------------------------------ chat
    def _prepare(self, question: str, image_file: str | None, state: PageState, session: Session) -> Turn:
        """Check everything a turn needs; :class:`ChatInputError` / :class:`ModelLoadError` say what is wrong."""
        question = check_prompt(question)
        notes: list[str] = []
        if image_file and image_file != state.image_src:  # an API call that brings its image
            notes = self._take_image(image_file, state, session)
        entry = self.registry.ensure(state.model_id)  # loaded again, once, if another session evicted it
        check_special_tokens(question, entry.processor)
        if state.media == "video":
            if not state.video:
                raise ChatInputError("No video: upload a video (or pick an example video) before asking a question.")
            check_video_model(entry.model, entry.model_id)
            video = self._video_frames(state)
            media = Media(video=video, video_step=frames_per_layout_frame(entry.model))
            model_input: Image.Image | DecodedVideo = video
        else:
            if not state.image:
                raise ChatInputError("No image: upload an image (or pick an example) before asking a question.")
            image, _ = load_image(state.image)
            media = Media(image=image, region=image_region(entry.processor, image.size))
            model_input = image
        schedule, why = self.check_schedule(state.schedule, entry.card(), state)
        if schedule is None:
            raise ChatInputError(why.replace("⚠️ ", "").replace("**", ""))
        return Turn(entry, question, schedule, media, model_input, notes)

    def chat(self, question: str, image_file: str | None, state: PageState, request: gr.Request) -> Iterator[tuple]:
        """One turn: stream both answers into the two panes, then draw the run. Bad input gets a
        message in the notice line and changes nothing else."""
        session = self.session(state, request)
        skip = Visuals.unchanged().values()
        try:
            turn = self._prepare(question, image_file, state, session)
        except (ChatInputError, ModelLoadError) as err:
            yield (messages(state.turns_full), messages(state.turns_drop), notice(str(err), "error"), state,
                   gr.skip()) + skip
            return
        turns_full, turns_drop = list(state.turns_full), list(state.turns_drop)
        yield (messages(turns_full, (turn.question, "")), messages(turns_drop, (turn.question, "")),
               notice("Generating (unpruned and V²Drop, interleaved)…"), state, "") + skip
        event = None
        try:
            for event, update in self._stream(turn, turns_full, turns_drop):
                if update is None:  # the final event
                    break
                yield update + (state, gr.skip()) + skip
        except Exception:  # noqa: BLE001 - the page gets a message, the log the traceback
            log.exception("generation failed")
            yield (messages(turns_full), messages(turns_drop),
                   notice("Generation failed. The app is still running; try another image or video, question or "
                          "schedule.", "error"), state, turn.question) + skip
            return
        yield self._finish(turn, event, state, session)

    def _stream(self, turn: Turn, turns_full: list, turns_drop: list) -> Iterator[tuple[PairEvent, tuple | None]]:
        """(event, (full pane, drop pane, notice)) while both answers stream; the last event is final."""
        last_yield = 0.0
        with self._model_lock:
            for event in stream_pair(turn.entry.model, turn.entry.processor, turn.model_input, turn.question,
                                     turns_full, turns_drop, turn.schedule, max_new_tokens=self.answer_tokens):
                if event.trace is not None:
                    yield event, None
                    return
                now = time.monotonic()
                first = (event.full.tokens, event.drop.tokens) in ((1, 0), (1, 1))  # first tokens: show at once
                if not first and now - last_yield < STREAM_INTERVAL:
                    continue  # coalesce updates: each one costs a round trip to every browser
                last_yield = now
                yield event, (messages(turns_full, (turn.question, event.full_text)),
                              messages(turns_drop, (turn.question, event.drop_text)), gr.skip())

    def _finish(self, turn: Turn, event: PairEvent, state: PageState, session: Session) -> tuple:
        """Store the finished turn and its trace (in the session's folder) and draw the run."""
        entry, schedule = turn.entry, turn.schedule
        state.turns_full = state.turns_full + [(turn.question, event.full_text)]
        state.turns_drop = state.turns_drop + [(turn.question, event.drop_text)]
        trace_dict = event.trace.to_dict()
        trace_file = self.sessions.new_file(session.key, "trace", ".json")
        trace_file.write_text(json.dumps(trace_dict, indent=1))
        _remove(state.trace_file)
        state.trace_file = str(trace_file)
        state.stats = {"full": event.full.to_dict(), "drop": event.drop.to_dict(), "schedule": str(schedule),
                       "model_id": entry.model_id}
        state.region, state.video_step = turn.media.region, turn.media.video_step
        state.last_vision_tokens = event.trace.samples[0].num_vision_tokens if event.trace.samples else None
        f, d = event.full, event.drop
        done = (f"Done with `{schedule}` on {entry.model_id}: first tokens after {f.first_token_seconds * 1e3:.0f} ms "
                f"(unpruned) / {d.first_token_seconds * 1e3:.0f} ms (V²Drop); prefill {f.prefill_seconds * 1e3:.0f} → "
                f"{d.prefill_seconds * 1e3:.0f} ms.")
        if turn.notes:
            done = " ".join(turn.notes) + " " + done
        if not entry.trained:
            done += " (The embedded model is untrained: its answers are meaningless.)"
        visuals = run_visuals(event.trace, state.stats, turn.media, str(trace_file))
        return (messages(state.turns_full), messages(state.turns_drop), notice(done, "ok"), state,
                gr.skip()) + visuals.values()

    # ------------------------------------------------------------------------ layers
    def _last_run(self, state: PageState) -> tuple[Trace, Media] | None:
        """The last run's trace and what it was about, or None if there is none (any more)."""
        if not state.trace_file or not state.has_media:
            return None
        try:
            trace = Trace.from_dict(json.loads(Path(state.trace_file).read_text()))
            if state.media == "video":
                return trace, Media(video=self._video_frames(state), video_step=state.video_step)
            return trace, Media(image=Image.open(state.image).convert("RGB"), region=state.region)
        except (OSError, ValueError, ChatInputError):  # released or replaced meanwhile
            return None

    def on_layer(self, layer: float, state: PageState):
        run = self._last_run(state)
        if run is None:
            return None, None, ""
        sample = run[0].samples[0]
        kept, heat = layer_images(run[1], sample, int(layer))
        return kept, heat, layer_caption(sample, int(layer), heat is not None)

    def on_drop_layer(self, layer: Any, state: PageState):
        run = self._last_run(state) if layer is not None else None
        if run is None or int(layer) not in run[0].samples[0].kept:
            return None
        return dropped_image(run[1], run[0].samples[0], int(layer))

    def on_tick(self, layer: float, state: PageState):
        if not state.stats:
            return gr.skip(), gr.Timer(active=False), "▶ Play"
        last = self._card(state).num_layers - 1
        nxt = int(layer) + 1
        if nxt >= last:
            return last, gr.Timer(active=False), "▶ Play"
        return nxt, gr.Timer(active=True), "⏸ Pause"

    def on_play(self, label: str, layer: float, state: PageState):
        if not state.stats or label.startswith("⏸"):
            return gr.skip(), gr.Timer(active=False), "▶ Play"
        last = self._card(state).num_layers - 1
        return (0 if int(layer) >= last else gr.skip()), gr.Timer(active=True), "⏸ Pause"


def _remove(path: str | None) -> None:
    """Delete one of the session's own files (never anything else: callers pass only those)."""
    if path:
        try:
            os.remove(path)
        except OSError:
            pass


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
