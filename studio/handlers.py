"""The page's event handlers: what each click, upload and edit does to one visitor's session.

:class:`Studio` holds everything the handlers share (the model registry, the session store, the
frame cache); each visitor's own state is a :class:`~studio.state.PageState` that Gradio keeps per
session. Handlers get the visitor's ``gr.Request``, so files are always written to that session's
own folder. Messages for the page never carry a server path or an exception class name.

What matters (:mod:`studio.matters`): a gallery picture, recognised by its pixels, brings the
ground truth of its objects; a visitor's mark (brush or box) replaces it. After each run, and after
each mark or baseline pick, the chart of the tokens that matter still alive per layer is redrawn
from the stored traces, without running the model again (a picked baseline runs one prefill).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from PIL import Image

from shapes.embedded import EMBEDDED_MODELS
from studio.ground_truth import GroundTruth
from studio.image_cap import image_caption
from studio.layer_sweep import run_layer_sweep, sweep_markdown, tie_sentence
from studio.lesson import expected_answer, model_note
from studio.reason import owner_of
from studio.summary import summarise_turn
from studio.traps import load_sweep, preset_warning
from studio.inputs import ChatInputError, check_prompt, check_special_tokens, image_region, load_image
from studio.editor import MarkEditor, mark_brush
from studio.marks import editor_value, load_mask, mask_from_box, mask_from_editor, painted_share, save_mask
from studio.matters import (BASELINES, NO_RUN_NOTE, baseline_label, chart_of, find_matters, matters_state,
                            trace_record)
from studio.model_numbers import numbers_of
from studio.pair import PairEvent, prefill_trace, stream_pair
from studio.registry import EMBEDDED_ID, LoadedModel, ModelCard, ModelLoadError, ModelRegistry
from studio.schedules import nominal_vision_tokens, presets_for, schedule_summary
from studio.sessions import FrameCache, Session, SessionClosed, SessionStore
from studio.values import MAX_ID_CHARS, MAX_PICK_CHARS, MAX_SCHEDULE_CHARS, point, text_value, whole_number
from studio.state import PageState
from studio.videos import VIDEO_MODELS, check_num_frames, check_video_model, load_video_file
from studio.views import Media, Visuals, dropped_image, layer_caption, layer_images, run_visuals
from v2drop.schedule import DropSchedule, matched_schedule
from v2drop.trace import SampleTrace, Trace
from v2drop.video import DecodedVideo
from v2drop.video_inputs import frames_per_layout_frame, supports_video
from visualize import charts, overlay, story
from visualize.layer_sweep import layer_sweep_chart
from visualize.two_models import comparison_figure, comparison_story

__all__ = ["Studio", "notice", "messages"]

log = logging.getLogger("v2drop.app")
STREAM_INTERVAL = 0.08  # seconds between streamed chat updates
CUSTOM_PRESET = ("custom — your own schedule (edited)", "custom")  # the Preset box after a hand edit


def notice(text: str, kind: str = "info") -> str:
    """A line for the page (markdown) with its icon. Angle brackets outside `code` are shown as
    text: a message that quotes ``<image>`` must show it, not hand it to the browser as a tag."""
    icon = {"info": "ℹ️", "warn": "⚠️", "error": "❌", "ok": "✅"}[kind]
    return f"{icon} {as_text(text)}" if text else ""


def as_text(text: str) -> str:
    """``text`` with ``<`` and ``>`` outside backtick code spans written as entities (markdown
    shows them as they are; inside a code span they are text already)."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") and p.endswith("`") and len(p) > 1 else
                   p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for p in parts)


def messages(turns: list, pending: tuple[str, str] | None = None,
             tags: list[str] | None = None) -> list[dict[str, str]]:
    """Chatbot messages; an empty finished answer is shown as such, a pending one as '…'. ``tags``
    (one per turn): the line under each answer (right/wrong, the schedule and method that produced it)."""
    out = []
    for i, (q, a) in enumerate(turns):
        tag = tags[i] if tags and i < len(tags) and tags[i] else ""
        answer = (a or "(empty answer)") + (f"\n\n*{tag}*" if tag else "")
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]
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
                 answer_tokens: int = 48, truth: GroundTruth | None = None) -> None:
        self.registry = registry
        self.sessions = sessions
        self.frames = frames
        self.answer_tokens = answer_tokens
        self.truth = truth if truth is not None else GroundTruth()  # the gallery's scenes, by pixel hash
        self._model_lock = threading.Lock()  # belt and braces: the queue already runs one model job at a time
        self._measured: dict[str, dict | None] = {}  # embedded id -> its sweep (hashing the weights once)

    # ------------------------------------------------------------------------ sessions
    def initial_state(self) -> PageState:
        """A new visitor's state: the embedded model and its first preset."""
        card = self.registry.card(EMBEDDED_ID)
        return PageState(schedule=self.first_schedule(card)[1], num_frames=card.default_frames)

    def session(self, state: PageState, request: gr.Request | None) -> Session:
        """This visitor's session (its own folder), marked as used now."""
        key = getattr(request, "session_hash", None) or state.session_key or "local"
        state.session_key = key
        try:
            return self.sessions.open(key)
        except SessionClosed:  # its tab closed (or it idled out) while this event waited: never reopened
            raise gr.Error("This page's session has ended; reload the page to start again.",
                           print_exception=False) from None

    def on_unload(self, request: gr.Request) -> None:
        """The tab was closed: free the session's files and frames at once."""
        self.sessions.release(getattr(request, "session_hash", None))

    def on_state_deleted(self, state: Any) -> None:
        """Gradio dropped an idle session's state: free its files and frames too."""
        self.sessions.release(getattr(state, "session_key", None))

    def forget_frames(self, session: Session) -> None:
        self.frames.drop_under(session.folder)

    # ------------------------------------------------------------------------ schedule
    def measured_sweep(self, card: ModelCard) -> dict | None:
        """This embedded model's drop-layer sweep (``benchmarks.sweep``, in its own folder), when
        measured on its weights; None for other models."""
        if not card.is_embedded or not card.trained:
            return None
        if card.model_id not in self._measured:
            self._measured[card.model_id] = load_sweep(self.registry.embedded_folder(card.model_id))
        return self._measured[card.model_id]

    def measured_view(self, card: ModelCard) -> tuple[str, Any]:
        """(markdown, figure or None) of an embedded model's measured drop-layer sweep."""
        sweep = self.measured_sweep(card)
        if sweep is None:
            return (f"**The drop-layer sweep:** none measured on the weights of `{card.model_id}` "
                    "(see *Two embedded models* above for how to make one)."), None
        return story.sweep_story(sweep), charts.sweep_chart(sweep)

    def sweep_view(self, state: PageState) -> tuple:
        """*How it works*' measured sweep (markdown, plot) for the picked embedded model; unchanged
        while a hub model is picked (it stays the last embedded model's)."""
        card = self._card(state)
        if not card.is_embedded:
            return gr.skip(), gr.skip()
        text, figure = self.measured_view(card)
        return text, gr.Plot(value=figure, visible=figure is not None, label=f"Drop-layer sweep on {card.model_id}")

    def embedded_comparison(self) -> tuple[str, Any]:
        """(markdown, figure) of *How it works*' two embedded models side by side, from their folders."""
        numbers = [numbers_of(spec, self.registry.embedded_folder(spec.model_id)) for spec in EMBEDDED_MODELS]
        return comparison_story(numbers), comparison_figure(numbers)

    def preset_choices(self, card: ModelCard) -> list[tuple[str, str]]:
        """(label, name) of each preset; a preset whose first drop falls into a measured trap says so."""
        sweep = self.measured_sweep(card)
        out = []
        for name, text, desc in presets_for(card, card.is_embedded):
            warning = preset_warning(sweep, text, card.num_layers)
            out.append((f"{name} — {text} — " + (f"{warning} — " if warning else "") + desc, name))
        return out

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
        if not isinstance(name, str) or len(name) > MAX_PICK_CHARS:
            return gr.skip(), gr.skip(), state
        text = next((t for n, t, _ in presets_for(card, card.is_embedded) if n == name), None) or state.schedule
        state.schedule = text
        return text, self.check_schedule(text, card, state)[1], state

    def on_schedule_edit(self, text: str, state: PageState):
        try:
            text = text_value(text, MAX_SCHEDULE_CHARS, "schedule")
        except ChatInputError as err:  # neither stored nor echoed
            return story.schedule_text(None, error=str(err)), state
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
        try:
            model_id = text_value(model_id, MAX_ID_CHARS, "model id").strip() or EMBEDDED_ID
            entry = self.registry.load(model_id, trust_remote_code=bool(trust),
                                       progress=lambda f, m: progress(f, desc=m))
        except (ModelLoadError, ChatInputError) as err:
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
        scene = self.truth.scene_of(image)  # the picture's pixels decide, not the file's name
        state.truth = scene.name if scene else None
        self._forget_mark(state)
        state.box_corner = None
        state.new_chat()
        return notes

    @staticmethod
    def _forget_mark(state: PageState) -> None:
        _remove(state.mark_file)
        state.mark_file = None

    def on_image(self, path: str | None, state: PageState, request: gr.Request):
        """Validate an upload, show it, and start a new conversation about it."""
        session = self.session(state, request)
        state.new_chat()
        if not path:
            _remove(state.image)
            state.image = state.image_src = state.truth = state.box_corner = None
            self._forget_mark(state)
            return None, [], [], "", state  # (a refused upload's message stays under the box)
        try:
            notes = self._take_image(path, state, session)
        except ChatInputError as err:
            state.image = state.image_src = state.truth = None
            state.upload_error = str(err)  # also under the upload box (image_info), where the visitor looks
            self._forget_mark(state)
            return None, [], [], notice(str(err), "error"), state
        state.upload_error = None
        text = " ".join(notes) + (" " if notes else "") + "New image: a new conversation starts."
        return state.image, [], [], notice(text, "warn" if notes else "info"), state

    def image_info(self, state: PageState) -> str:
        """The line under the image: its vision-token count for the current model under the
        operator's image cap (empty without an image, or when the model was evicted); after a refused
        upload, why it was refused."""
        if not state.image:
            return notice(state.upload_error, "error") if state.upload_error else ""
        known = ("\n\n🎯 A generated scene from the gallery: its objects are known, so the *What matters* tab "
                 "follows the patches of the objects your question names (ground truth).") if state.truth else ""
        try:
            entry = self.registry.get(state.model_id)
            with Image.open(state.image) as image:
                return image_caption(entry, image.convert("RGB")) + known
        except (KeyError, OSError, ValueError):
            return known.strip()

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
            state.video_error = reason  # also under the upload box (video_info), where the visitor looks
            return None, [], [], notice(reason, "error"), state
        state.media, state.video_error = "video", None
        text = (f"New video: {len(video)} frames sampled of {video.total_frames} ({video.duration:.1f} s, "
                f"{video.width}×{video.height}). A new conversation starts.")
        kind = "info"
        try:
            check_video_model(self._card(state), state.model_id)
        except ChatInputError as err:
            text, kind = f"{err}", "warn"
        sheet = overlay.contact_sheet(video.frames, video.timestamps, size=160, per_row=4)
        return sheet, [], [], notice(text, kind), state

    def video_info(self, state: PageState) -> str:
        """The line under the video upload: why the last video was refused, or that the current
        model takes no video (the same words as the notice at the top, where the visitor is)."""
        if state.video_error:
            return notice(state.video_error, "error")
        if not state.video:
            return ""
        try:
            check_video_model(self._card(state), state.model_id)
        except ChatInputError as err:
            return notice(str(err), "warn")
        return ""

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
            self._forget_run(state)  # the views must not pass the last run's numbers off as this one's
            yield (messages(state.turns_full), messages(state.turns_drop), notice(str(err), "error"), state,
                   gr.skip()) + Visuals.cleared().values()
            return
        turns_full, turns_drop = list(state.turns_full), list(state.turns_drop)
        state.seed = secrets.randbelow(2 ** 31)  # the random baseline's draw for this run (shown, reproducible)
        tags = _tags(state)
        caveat = self._model_note(turn, state)  # shown before the answers, not after
        yield (messages(turns_full, (turn.question, ""), tags[0]), messages(turns_drop, (turn.question, ""), tags[1]),
               notice(caveat, "warn") if caveat else notice("Generating (unpruned and V²Drop, interleaved)…"),
               state, "") + skip
        event = None
        try:
            for event, update in self._stream(turn, turns_full, turns_drop, tags):
                if update is None:  # the final event
                    break
                yield update + (state, gr.skip()) + skip
        except Exception:  # noqa: BLE001 - the page gets a message, the log the traceback
            log.exception("generation failed")
            self._forget_run(state)
            yield (messages(turns_full, tags=tags[0]), messages(turns_drop, tags=tags[1]),
                   notice("Generation failed. The app is still running; try another image or video, question or "
                          "schedule.", "error"), state, turn.question) + Visuals.cleared().values()
            return
        yield self._finish(turn, event, state, session)

    @staticmethod
    def _forget_run(state: PageState) -> None:
        """Forget the last run's trace and numbers (the chat stays): nothing redraws them any more."""
        _remove(state.trace_file)
        _remove(state.baseline_file)
        state.trace_file = state.stats = state.matters = state.baseline_file = None

    def views_for(self, state: PageState) -> tuple:
        """After a new image or video, a tab switch or a cleared chat: the run's views cleared when
        the session has no run any more (so no chart shows the previous run's numbers), else kept."""
        return (Visuals.unchanged() if state.stats else Visuals.cleared()).values()

    def preset_for(self, state: PageState):
        """The Preset box after a schedule edit: the preset whose schedule this is, else "custom"."""
        card = self._card(state)
        try:
            mine = str(DropSchedule.parse(state.schedule or ""))
        except ValueError:
            mine = None
        for name, text, _ in presets_for(card, card.is_embedded):
            try:
                if mine is not None and str(DropSchedule.parse(text)) == mine:
                    return gr.Dropdown(choices=self.preset_choices(card), value=name)
            except ValueError:
                continue
        return gr.Dropdown(choices=self.preset_choices(card) + [CUSTOM_PRESET], value=CUSTOM_PRESET[1])

    def _stream(self, turn: Turn, turns_full: list, turns_drop: list,
                tags: tuple[list, list] = ([], [])) -> Iterator[tuple[PairEvent, tuple | None]]:
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
                yield event, (messages(turns_full, (turn.question, event.full_text), tags[0]),
                              messages(turns_drop, (turn.question, event.drop_text), tags[1]), gr.skip())

    def _finish(self, turn: Turn, event: PairEvent, state: PageState, session: Session) -> tuple:
        """Store the finished turn and its trace (in the session's folder) and draw the run."""
        entry, schedule = turn.entry, turn.schedule
        history = list(state.turns_full)
        state.turns_full = state.turns_full + [(turn.question, event.full_text)]
        state.turns_drop = state.turns_drop + [(turn.question, event.drop_text)]
        state.stats = {"full": event.full.to_dict(), "drop": event.drop.to_dict(), "schedule": str(schedule),
                       "model_id": entry.model_id}
        failed = self._run_baseline(entry, state, session, turn.model_input, turn.question, history, event.trace)
        matters_note = self._update_matters(state, session, event.trace, turn.media, turn.question)
        if failed:
            matters_note += " " + failed
        state.region, state.video_step = turn.media.region, turn.media.video_step
        state.last_vision_tokens = event.trace.samples[0].num_vision_tokens if event.trace.samples else None
        f, d = event.full, event.drop
        done = (f"Done with `{schedule}` on {entry.model_id}: time to first token (each run's own) "
                f"{f.first_token_seconds * 1e3:.0f} ms (unpruned) / {d.first_token_seconds * 1e3:.0f} ms (V²Drop); "
                f"prefill {f.prefill_seconds * 1e3:.0f} → {d.prefill_seconds * 1e3:.0f} ms.")
        if turn.notes:
            done = " ".join(turn.notes) + " " + done
        if not entry.trained:
            done += " (The embedded model is untrained: its answers are meaningless.)"
        lesson = self._lesson(turn, event, state)
        if lesson.reason:
            done += f" Why V²Drop's answer differs: {lesson.reason}"
        visuals = run_visuals(event.trace, state.stats, turn.media, state.trace_file, state.matters, matters_note)
        if lesson.objects:  # "This run" knows what happened to the question's objects
            visuals.story += f"\n\n**The question's objects in this run:** {lesson.objects}"
        tags = _tags(state)
        return (messages(state.turns_full, tags=tags[0]), messages(state.turns_drop, tags=tags[1]),
                notice(done, "ok"), state, gr.skip()) + visuals.values()

    # ------------------------------------------------------------------------ the lesson
    def _model_note(self, turn: Turn, state: PageState) -> str:
        """What the embedded model cannot answer here (a photo, a free-form question), or ""."""
        if not turn.entry.is_embedded or not turn.entry.trained or state.media != "image":
            return ""
        return model_note(turn.question, has_truth=bool(state.truth))

    def _expected(self, question: str, state: PageState) -> str | None:
        """The right answer to ``question`` when the picture is a known scene (None otherwise)."""
        scene = self.truth.by_name(state.truth) if state.media == "image" else None
        if scene is None:
            return None
        return expected_answer(question, list(scene.objects), self.truth.record(scene.name))

    def _lesson(self, turn: Turn, event: PairEvent, state: PageState):
        """The finished turn's truth, tags and reason, kept in the state for the panes and the summary."""
        sample = event.trace.samples[0] if event.trace and event.trace.samples else None
        summary = summarise_turn(event.full_text, event.drop_text, self._expected(turn.question, state),
                                 str(turn.schedule), sample, state.matters, self._model_note(turn, state), state.seed)
        state.turn_notes = state.turn_notes + [(summary.full_tag, summary.drop_tag)]
        state.summary = summary.markdown
        state.layer_sweep = None
        return summary

    def run_summary(self, state: PageState) -> tuple:
        """(summary, sweep table, sweep chart) under the answers: after a turn, a new picture or a
        cleared chat the sweep of an earlier question is cleared (a new run forgets it)."""
        if state.layer_sweep is None:
            return state.summary, "", gr.Plot(value=None, visible=False)
        return state.summary, gr.skip(), gr.skip()

    def on_layer_sweep(self, state: PageState, request: gr.Request):
        """The one-click sweep: the last question at the same budget, first drop at every layer, for
        V²Drop, random and uniform. Returns (table, chart, the How-it-works line, state)."""
        self.session(state, request)
        run = self._last_run(state) if state.turns_full and state.stats else None
        if run is None or run[1].image is None:
            why = "Ask a question about a picture first: the sweep runs your last question." if state.media == "image" \
                else "The drop-layer sweep runs on pictures: switch to the Image tab."
            return notice(why, "info"), gr.Plot(value=None, visible=False), gr.skip(), state
        trace, media = run
        try:
            entry = self.registry.ensure(state.stats["model_id"])
            question, history = state.turns_full[-1][0], state.turns_full[:-1]
            matters = state.matters or {}
            with self._model_lock:
                sweep = run_layer_sweep(entry.model, entry.processor, media.image, question, history,
                                        DropSchedule.parse(state.stats["schedule"]),
                                        trace.samples[0].num_vision_tokens, tokens=matters.get("tokens") or (),
                                        expected=self._expected(question, state), seed=state.seed or 0)
        except (ModelLoadError, ChatInputError, ValueError) as err:
            return notice(str(err), "error"), gr.Plot(value=None, visible=False), gr.skip(), state
        state.layer_sweep = sweep.to_dict()
        whose = owner_of(matters.get("objects", []), matters.get("source", ""))
        thing = whose[:-2] if whose.endswith("'s") else whose.rstrip("'")
        chart = layer_sweep_chart(sweep.to_dict())
        return (sweep_markdown(sweep, whose), gr.Plot(value=chart, visible=chart is not None),
                "**This question, swept:** " + tie_sentence(sweep, thing), state)

    # ------------------------------------------------------------------------ what matters
    def _run_baseline(self, entry: LoadedModel, state: PageState, session: Session, model_input: Any,
                      question: str, history: list, trace: Trace) -> str:
        """The picked baseline's prefill on the last turn's inputs at V²Drop's layer-averaged budget
        (:func:`v2drop.schedule.matched_schedule`); its trace goes to the session's folder. Returns
        a note for the page if it failed (else "")."""
        _remove(state.baseline_file)
        state.baseline_file = None
        if state.baseline == "none" or not trace.samples:
            return ""
        reference = DropSchedule.parse(state.stats["schedule"])
        n = trace.samples[0].num_vision_tokens
        schedule, note = matched_schedule(state.baseline, reference, trace.num_layers, n)
        try:
            with self._model_lock:
                base = prefill_trace(entry.model, entry.processor, model_input, question, history, schedule,
                                     state.baseline, seed=state.seed or 0)
        except Exception:  # noqa: BLE001 - the page gets a message, the log the traceback
            log.exception("baseline prefill failed")
            return f"{baseline_label(state.baseline)} could not run on this model; the chart leaves it out."
        data = base.to_dict()
        data["matched_note"] = note
        path = self.sessions.new_file(session.key, "baseline", ".json")
        path.write_text(json.dumps(data))
        state.baseline_file = str(path)
        return ""

    def _baseline(self, state: PageState) -> tuple[dict, SampleTrace] | None:
        """(what the chart says about the baseline, its sample) of the last run, if one was run."""
        if not state.baseline_file:
            return None
        try:
            data = json.loads(Path(state.baseline_file).read_text())
            trace = Trace.from_dict(data)
        except (OSError, ValueError):
            return None
        sample = trace.samples[0]
        info = {"method": trace.method, "label": baseline_label(trace.method), "schedule": trace.schedule,
                "note": data.get("matched_note"), "kept": {str(k): v for k, v in sample.kept.items()}}
        return info, sample

    def _no_matters_note(self, state: PageState) -> str:
        if state.media == "video":
            return "Ground truth and marks apply to images: the chart follows what matters in a picture."
        return ("Mark what matters on the picture (brush it in the editor, or click two corners of a box on the "
                "image) to see how much of it each layer keeps. Gallery scenes come with their ground truth.")

    def _update_matters(self, state: PageState, session: Session, trace: Trace, media: Media, question: str) -> str:
        """Find the tokens that matter for the last run, keep the chart's data in the state, outline
        them in ``media``, and write the trace (with ``what_matters``) afresh. Returns the note."""
        sample = trace.samples[0]
        found = None
        if media.image is not None:
            mark = load_mask(state.mark_file) if state.mark_file else None
            found = find_matters(self.truth.by_name(state.truth), mark, question, sample, media.region or
                                 (0, 0, *media.image.size), media.image.size)
        baseline = self._baseline(state)
        runs: dict[str, SampleTrace | None] = {"unpruned": None, "V²Drop": sample}
        if baseline is not None:
            runs[baseline[0]["label"]] = baseline[1]
        state.matters = matters_state(found, trace.num_layers, runs, sorted(sample.kept),
                                      baseline[0] if baseline else None) if found else None
        media.marked = found.tokens if found else None
        data = trace.to_dict()
        if state.matters:
            data["what_matters"] = trace_record(state.matters, question)
        # one trace file per session, replaced in place: a path that a concurrent handler (a mark
        # stroke while a run finishes) has returned stays readable when Gradio postprocesses it
        path = Path(state.trace_file) if state.trace_file else self.sessions.new_file(session.key, "trace", ".json")
        _replace_file(path, json.dumps(data, indent=1))
        state.trace_file = str(path)
        note = found.note if found else self._no_matters_note(state)
        if baseline is not None and found and found.tokens:
            info = baseline[0]
            note += (f" The {info['label']} baseline: one prefill at V²Drop's layer-averaged budget, "
                     f"`{info['schedule']}`.")
            if info["method"] == "random":
                note += (f" That is one draw (seed {state.seed or 0}, fresh for every run): on average, random "
                         "dropping keeps each layer's budget share of any set of tokens, and a single draw can "
                         "keep more or less.")
            if info.get("note"):
                note += f" ({info['note']}.)"
        return note

    def _redraw(self, state: PageState, session: Session, layer: Any, drop_layer: Any, note: str = "") -> tuple:
        """After a mark or a baseline pick: (kept, heat, dropped, chart, note, trace file) of the last
        run, without running the model; without a run, only the note (and no chart)."""
        run = self._last_run(state)
        if run is None or not state.turns_full:
            return gr.skip(), gr.skip(), gr.skip(), None, (note + " " + NO_RUN_NOTE).strip(), gr.skip()
        trace, media = run
        sample = trace.samples[0]
        text = self._update_matters(state, session, trace, media, state.turns_full[-1][0])
        drops = sorted(sample.kept)
        layer = whole_number(layer, 0, trace.num_layers - 1)
        layer = layer if layer is not None else (drops[-1] if drops else 0)
        kept, heat = layer_images(media, sample, layer)
        drop_layer = whole_number(drop_layer, 0, trace.num_layers - 1)
        if drop_layer not in sample.kept:  # none picked, or the previous run's layer: the first drop layer
            drop_layer = drops[0] if drops else None
        dropped = dropped_image(media, sample, drop_layer) if drop_layer in sample.kept else None
        return kept, heat, dropped, chart_of(state.matters), text, state.trace_file

    def _mark_target(self, state: PageState) -> tuple[int, int]:
        """The size of the picture a mark is about; :class:`ChatInputError` when there is none."""
        if state.media != "image":
            raise ChatInputError("Marks apply to pictures: switch to the Image tab to mark what matters.")
        if not state.image:
            raise ChatInputError("No picture to mark: upload an image (or pick an example) first.")
        with Image.open(state.image) as image:
            return image.size

    def _store_mark(self, mask: Any, state: PageState, session: Session) -> str:
        """Keep ``mask`` (or forget the mark when None) in the session's folder; the page's note."""
        self._forget_mark(state)
        if mask is None:
            return "No mark." + (" The chart follows the ground truth." if state.truth else "")
        path = self.sessions.new_file(session.key, "mark", ".png")
        save_mask(mask, path)
        state.mark_file = str(path)
        return f"Marked {100 * painted_share(mask):.0f} % of the picture."

    def on_mark(self, value: Any, layer: Any, drop_layer: Any, state: PageState, request: gr.Request):
        """The editor's layers as the mark of what matters (empty layers: no mark); redraws the
        chart and the outlines of the last run."""
        session = self.session(state, request)
        try:
            self._mark_target(state)
            mask = mask_from_editor(value)
        except ChatInputError as err:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), notice(str(err), "error"), gr.skip(), state
        if mask is None and not state.mark_file:  # nothing painted, nothing to forget (e.g. the editor's load)
            return (gr.skip(),) * 7
        note = self._store_mark(mask, state, session)
        return *self._redraw(state, session, layer, drop_layer, note), state

    def on_mark_box(self, x0: float, y0: float, x1: float, y1: float, layer: Any, drop_layer: Any,
                    state: PageState, request: gr.Request):
        """A box ``(x0, y0, x1, y1)`` in pixels of the picture as the mark of what matters; the
        editor shows it."""
        session = self.session(state, request)
        try:
            mask = mask_from_box((x0, y0, x1, y1), self._mark_target(state))
            note = self._store_mark(mask, state, session)
        except ChatInputError as err:
            return (gr.skip(),) * 4 + (notice(str(err), "error"), gr.skip(), gr.skip(), state)
        return *self._redraw(state, session, layer, drop_layer, note), editor_value(state.image, mask), state

    def on_picture_click(self, evt: gr.SelectData, layer: Any, drop_layer: Any, state: PageState,
                         request: gr.Request):
        """Two clicks on the picture: the opposite corners of a box that marks what matters."""
        clicked = point(getattr(evt, "index", None))
        if clicked is None:
            return (gr.skip(),) * 7 + (state,)
        x, y = clicked
        if state.box_corner is None:
            state.box_corner = (x, y)
            return (gr.skip(),) * 4 + (f"First corner at ({x:.0f}, {y:.0f}): click the opposite corner.",
                                       gr.skip(), gr.skip(), state)
        (x0, y0), state.box_corner = state.box_corner, None
        return self.on_mark_box(x0, y0, x, y, layer, drop_layer, state, request)

    def on_clear_marks(self, layer: Any, drop_layer: Any, state: PageState, request: gr.Request):
        """Forget the mark (the ground truth, if any, comes back); the editor shows the bare picture."""
        session = self.session(state, request)
        note = self._store_mark(None, state, session)
        return *self._redraw(state, session, layer, drop_layer, note), editor_value(state.image), state

    def on_baseline(self, method: str, state: PageState, request: gr.Request):
        """Pick the baseline the chart adds; with a run, one prefill of it on the last turn."""
        session = self.session(state, request)
        if method not in BASELINES:
            return gr.skip(), notice(f"Pick a baseline among {', '.join(BASELINES)}.", "error"), gr.skip(), state
        state.baseline = method
        run = self._last_run(state) if state.turns_full and state.stats else None
        if run is None:
            _remove(state.baseline_file)
            state.baseline_file = None
            return gr.skip(), (f"{baseline_label(method)} joins the chart after the next question."
                               if method != "none" else ""), gr.skip(), state
        trace, media = run
        try:
            entry = self.registry.ensure(state.stats["model_id"])
            model_input = media.video if media.video is not None else media.image
            failed = self._run_baseline(entry, state, session, model_input, state.turns_full[-1][0],
                                        state.turns_full[:-1], trace)
        except (ModelLoadError, ChatInputError) as err:
            return gr.skip(), notice(str(err), "error"), gr.skip(), state
        note = self._update_matters(state, session, trace, media, state.turns_full[-1][0])
        note += (" " + failed) if failed else ""
        return chart_of(state.matters), note, state.trace_file, state

    def editor_for(self, state: PageState):
        """The mark editor for the current picture: its value (with the mark, if any) and a brush
        sized for it."""
        if state.media != "image" or not state.image:
            return MarkEditor(value=None)
        try:
            with Image.open(state.image) as image:
                size = image.size
            value = editor_value(state.image, load_mask(state.mark_file) if state.mark_file else None)
        except OSError:
            return MarkEditor(value=None)
        return MarkEditor(value=value, brush=mark_brush(size))

    # ------------------------------------------------------------------------ layers
    def _last_run(self, state: PageState) -> tuple[Trace, Media] | None:
        """The last run's trace and what it was about, or None if there is none (any more)."""
        if not state.trace_file or not state.has_media:
            return None
        try:
            trace = Trace.from_dict(json.loads(Path(state.trace_file).read_text()))
            if state.media == "video":
                return trace, Media(video=self._video_frames(state), video_step=state.video_step)
            marked = (state.matters or {}).get("tokens") or None
            return trace, Media(image=Image.open(state.image).convert("RGB"), region=state.region, marked=marked)
        except (OSError, ValueError, ChatInputError):  # released or replaced meanwhile
            return None

    def on_layer(self, layer: float, state: PageState):
        run = self._last_run(state)
        layer = whole_number(layer, 0, run[0].num_layers - 1) if run is not None else None
        if run is None or layer is None:
            return None, None, ""
        sample = run[0].samples[0]
        kept, heat = layer_images(run[1], sample, layer)
        return kept, heat, layer_caption(sample, layer, heat is not None)

    def on_drop_layer(self, layer: Any, state: PageState):
        layer = whole_number(layer, 0, 10_000)
        run = self._last_run(state) if layer is not None else None
        if run is None or layer not in run[0].samples[0].kept:
            return None
        return dropped_image(run[1], run[0].samples[0], layer)

    def on_tick(self, layer: float, state: PageState):
        if not state.stats:
            return gr.skip(), gr.Timer(active=False), "▶ Play"
        last = self._card(state).num_layers - 1
        nxt = (whole_number(layer, 0, last) or 0) + 1
        if nxt >= last:
            return last, gr.Timer(active=False), "▶ Play"
        return nxt, gr.Timer(active=True), "⏸ Pause"

    def on_play(self, label: str, layer: float, state: PageState):
        if not state.stats or not isinstance(label, str) or label.startswith("⏸"):
            return gr.skip(), gr.Timer(active=False), "▶ Play"
        last = self._card(state).num_layers - 1
        shown = whole_number(layer, 0, last)
        return (0 if shown is None or shown >= last else gr.skip()), gr.Timer(active=True), "⏸ Pause"


def _tags(state: PageState) -> tuple[list[str], list[str]]:
    """The lines under the answers, one per finished turn: (unpruned pane's, V²Drop pane's)."""
    return [t[0] for t in state.turn_notes], [t[1] for t in state.turn_notes]


def _remove(path: str | None) -> None:
    """Delete one of the session's own files (never anything else: callers pass only those)."""
    if path:
        try:
            os.remove(path)
        except OSError:
            pass


def _replace_file(path: Path, text: str) -> None:
    """Write ``path`` so that it never exists half-written or not at all once it has existed."""
    partial = path.with_name(f"{path.name}.{secrets.token_hex(4)}.part")  # concurrent writers: one each
    partial.write_text(text)
    os.replace(partial, path)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
