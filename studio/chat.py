"""Model-side logic of the side-by-side chat: inputs, the interleaved unpruned / V²Drop
generation loop, and a small cache of loaded models.

Nothing here knows about Gradio; ``app.py`` is layout and wiring only. Typical use::

    from studio.chat import ModelRegistry, load_image, stream_pair
    registry = ModelRegistry()
    entry = registry.embedded()
    image, notes = load_image("assets/examples/shapes_0_color.png")
    for event in stream_pair(entry.model, entry.processor, image, "what color is the star ?",
                             [], [], DropSchedule.preset("shapes-50%")):
        print(event.full_text, "|", event.drop_text)
    event.trace        # the V²Drop run's Trace (trace_all_layers=True), event.full / event.drop: RunStats

Both answers are greedy. The two runs are interleaved token by token (unpruned prefill,
V²Drop prefill, then one decode step of each in turn), so both first tokens appear early.
The unpruned steps run inside ``run.paused()``: same weights, hooks out, its own KV cache.
"""

from __future__ import annotations

import gc
import os
import re
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import logging

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from v2drop.adapters import adapter_class, decoder_depth
from v2drop.compat import kv_cache_bytes
from v2drop.engine import apply
from v2drop.memory import memory_now, module_device
from v2drop.schedule import PAPER_LAYERS, PRESETS, DropSchedule, scale_layers
from v2drop.trace import Trace
from v2drop.video import SUPPORTED_EXTENSIONS, DecodedVideo, VideoLimits, load_video

__all__ = [
    "ChatInputError", "ModelLoadError", "RunStats", "PairEvent", "LoadedModel", "ModelRegistry",
    "load_image", "check_prompt", "build_messages", "build_inputs", "image_region", "stream_pair",
    "EMBEDDED_ID", "SUGGESTED_MODELS", "presets_for", "schedule_summary", "nominal_vision_tokens",
    "load_video_file", "check_video_model", "check_num_frames", "build_video_messages", "build_video_inputs",
    "VIDEO_MODELS", "MAX_VIDEO_FRAMES", "APP_VIDEO_LIMITS", "ModelCard", "check_special_tokens", "public_text",
]

log = logging.getLogger("v2drop.studio")
EMBEDDED_ID = "embedded: shapes-llava"
SUGGESTED_MODELS = [
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    "Qwen/Qwen2-VL-2B-Instruct",
    "Qwen/Qwen2.5-VL-3B-Instruct",
    "llava-hf/llava-1.5-7b-hf",
]
MAX_PROMPT_CHARS = 1000
MAX_IMAGE_SIDE = 2048          # larger images are downscaled before the processor sees them
MAX_IMAGE_PIXELS = 50_000_000  # PIL decompression-bomb limit applied while decoding uploads
MAX_NEW_TOKENS = 48
VIDEO_MODELS = "LLaVA-OneVision, Qwen2-VL and Qwen2.5-VL"
MAX_VIDEO_FRAMES = 32
#: what the app accepts (the library's defaults allow more): 100 MB, 5 minutes, 1080p
APP_VIDEO_LIMITS = VideoLimits(max_bytes=100 * 1024 * 1024, max_duration=5 * 60.0, max_frames=18_000,
                               max_pixels=1920 * 1080)


class ChatInputError(ValueError):
    """Bad user input; the message is meant for the page."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why in plain words."""


# ---------------------------------------------------------------------------------- inputs
def load_image(source: str | os.PathLike | Image.Image | None, max_side: int = MAX_IMAGE_SIDE,
               max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Image.Image, list[str]]:
    """Decode an upload safely: ``(RGB image, notes)``. Raises :class:`ChatInputError` for a
    missing, corrupt or non-image file and for an image above the decompression-bomb limit;
    downscales (and says so in ``notes``) an image whose longer side exceeds ``max_side``."""
    if source is None or (isinstance(source, str) and not source.strip()):
        raise ChatInputError("No image: upload an image (or pick an example) before asking a question.")
    notes: list[str] = []
    if isinstance(source, Image.Image):
        image = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ChatInputError(f"The image file {path.name!r} could not be found; upload it again.")
        old_limit = Image.MAX_IMAGE_PIXELS
        try:
            Image.MAX_IMAGE_PIXELS = max_pixels
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as opened:
                    w, h = opened.size
                    if w * h > max_pixels:
                        raise Image.DecompressionBombError(f"{w * h} pixels")
                    if getattr(opened, "n_frames", 1) > 1:  # before copy(): a copy is one frame
                        notes.append("Animated image: only its first frame is used.")
                    opened.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced size
                    image = opened.copy()
                    image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ChatInputError(
                f"This image is too large to decode safely (over {max_pixels / 1e6:.0f} megapixels, the "
                "decompression-bomb limit). Please upload a smaller image.") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ChatInputError(
                f"{path.name!r} is not a readable image. Upload a PNG, JPEG, WebP, GIF or BMP file.") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF: keep the pixels as stored
        pass
    if isinstance(source, Image.Image) and getattr(image, "n_frames", 1) > 1:
        notes.append("Animated image: only its first frame is used.")
    image = _to_rgb(image, notes)
    w, h = image.size
    if w < 2 or h < 2:
        raise ChatInputError(f"The image is only {w}×{h} pixels; upload a larger one.")
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        image = image.resize((max(2, round(w * scale)), max(2, round(h * scale))), Image.Resampling.LANCZOS)
        notes.append(f"The image was {w}×{h} pixels; it was downscaled to {image.width}×{image.height}.")
    return image, notes


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """8-bit RGB: transparency over white; 16-bit, 32-bit and float pixels scaled to 8 bits by the
    values they really hold (PIL's own conversion clips them to all-white or all-black)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "La", "PA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        return _high_depth_to_rgb(image, notes)
    try:
        return image.convert("RGB")
    except ValueError:
        raise ChatInputError(f"Images in the {image.mode} colour mode are not supported; upload an RGB "
                             "or greyscale image.") from None


def _high_depth_to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """A greyscale image of more than 8 bits (``I;16``, ``I``, ``F``) as 8-bit RGB, stretched from its
    lowest to its highest finite value."""
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ChatInputError("The image holds no finite pixel values; upload another image.")
    low, high = float(finite.min()), float(finite.max())
    scaled = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) / ((high - low) or 1.0)
    grey = Image.fromarray(np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8), mode="L")
    kind = "floating-point" if image.mode == "F" else "high bit depth (16/32-bit)"
    notes.append(f"The image has {kind} greyscale pixels; it was scaled to 8 bits from its value range "
                 f"{low:g} to {high:g}.")
    return grey.convert("RGB")


def check_special_tokens(question: str, processor: Any) -> str:
    """``question`` unchanged, or :class:`ChatInputError` if it contains one of the model's control
    tokens (``<image>``, ``<|im_start|>``, ``</s>``, …): they would be read as markup, not text."""
    found = sorted(t for t in _control_tokens(processor) if t in question)
    if found:
        shown = ", ".join(repr(t) for t in found[:3])
        raise ChatInputError(f"The question contains {shown}, which this model reads as a control token, not "
                             "as text. Please rephrase it without that token.")
    return question


def _control_tokens(processor: Any) -> set[str]:
    """The tokenizer's special and added special tokens, and the processor's image/video tokens."""
    tokenizer = getattr(processor, "tokenizer", processor)
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            tokens.add(str(added.content))
    for owner in (processor, tokenizer):
        for name in ("image_token", "video_token", "boi_token", "eoi_token"):
            value = getattr(owner, name, None)
            if isinstance(value, str):
                tokens.add(value)
    return {t for t in tokens if t and len(t) > 1}


def check_prompt(text: str | None, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """The question, stripped; :class:`ChatInputError` if empty or too long."""
    question = (text or "").strip()
    if not question:
        raise ChatInputError("The question is empty: type a question about the image.")
    if len(question) > max_chars:
        raise ChatInputError(f"The question is {len(question)} characters long; the limit is {max_chars}. "
                             "Please shorten it.")
    return question


def build_messages(turns: Sequence[tuple[str, str]], question: str) -> list[dict[str, Any]]:
    """Chat messages for a conversation about one image: the image goes with the first user turn.
    ``turns`` are earlier ``(question, answer)`` pairs of the same run."""
    messages: list[dict[str, Any]] = []
    for i, (q, a) in enumerate([*turns, (question, None)]):
        content: list[dict[str, Any]] = [{"type": "image"}] if i == 0 else []
        content.append({"type": "text", "text": q})
        messages.append({"role": "user", "content": content})
        if a is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    return messages


def build_inputs(processor: Any, turns: Sequence[tuple[str, str]], question: str, image: Image.Image) -> Any:
    """Tokenised multi-turn prompt + pixel values for any supported processor (batch of 1)."""
    text = processor.apply_chat_template(build_messages(turns, question), add_generation_prompt=True,
                                         tokenize=False)
    return processor(images=[image], text=[text], return_tensors="pt")


def image_region(processor: Any, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box ``(x0, y0, x1, y1)`` of the original image that the patch grid covers: the centre
    crop for processors that resize the short side and centre-crop (CLIP-style LLaVA-1.5); the
    whole image for those that resize the whole image (SigLIP, LLaVA-NeXT/OneVision, Qwen2-VL)."""
    w, h = image_size
    ip = getattr(processor, "image_processor", None)
    anyres = getattr(ip, "image_grid_pinpoints", None)  # NeXT: its tiles are already crop-sized, the crop is a no-op
    if ip is not None and not anyres and getattr(ip, "do_center_crop", False) and getattr(ip, "crop_size", None):
        crop, size = ip.crop_size, getattr(ip, "size", None)
        cw, ch = (_field(crop, "width"), _field(crop, "height")) if not isinstance(crop, int) else (crop, crop)
        short = _field(size, "shortest_edge")
        if cw and ch and short:
            scale = short / min(w, h)
            bw, bh = min(w, cw / scale), min(h, ch / scale)
            x0, y0 = (w - bw) / 2, (h - bh) / 2
            return (x0, y0, x0 + bw, y0 + bh)
    return (0.0, 0.0, float(w), float(h))


def _field(obj: Any, key: str) -> Any:
    """A key of a size dict (plain dict or transformers' SizeDict)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


# ---------------------------------------------------------------------------------- video
def check_video_model(model: torch.nn.Module, name: str | None = None) -> None:
    """:class:`ChatInputError` naming the video models if ``model`` takes no video."""
    from v2drop.video_inputs import supports_video
    if not supports_video(model):
        label = name or getattr(model.config, "model_type", type(model).__name__)
        raise ChatInputError(f"{label} takes no video (only images). Video needs a video model: {VIDEO_MODELS} "
                             "(e.g. llava-hf/llava-onevision-qwen2-0.5b-ov-hf or Qwen/Qwen2-VL-2B-Instruct): load "
                             "one under Model, or ask about an image instead.")


def check_num_frames(num_frames: Any, max_frames: int = MAX_VIDEO_FRAMES) -> int:
    """The frame count as an int in ``1 .. max_frames``; :class:`ChatInputError` otherwise."""
    try:
        n = int(num_frames)
    except (TypeError, ValueError):
        raise ChatInputError(f"The number of frames must be a whole number, got {num_frames!r}.") from None
    if not 1 <= n <= max_frames:
        raise ChatInputError(f"The number of frames must be between 1 and {max_frames}, got {n}.")
    return n


def load_video_file(source: str | os.PathLike | None, num_frames: int,
                    limits: VideoLimits | None = APP_VIDEO_LIMITS, max_side: int | None = 1024) -> DecodedVideo:
    """Decode an uploaded video and sample ``num_frames`` frames uniformly. Raises
    :class:`ChatInputError` (a message for the page) for a missing, unreadable, empty or too-long
    video; frames are shrunk to ``max_side`` (the processors resize them anyway)."""
    if source is None or (isinstance(source, str) and not source.strip()):
        raise ChatInputError("No video: upload a video (or pick an example) before asking a question.")
    num_frames = check_num_frames(num_frames)
    path = Path(source)
    if not path.is_file():
        raise ChatInputError(f"The video file {path.name!r} could not be found; upload it again.")
    try:
        video = load_video(path, num_frames=num_frames, limits=limits, max_side=max_side)
    except ValueError as err:
        reason = public_text(str(err), path)
        hint = "" if path.suffix.lower() in SUPPORTED_EXTENSIONS or "supported" in reason else \
            f" (supported: {', '.join(e.lstrip('.') for e in SUPPORTED_EXTENSIONS)})"
        raise ChatInputError(f"This video cannot be used: {reason}{hint}.") from None
    except ImportError:
        raise ChatInputError("Video decoding needs PyAV (pip install av), which is not installed here.") from None
    return video


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"<>|:]+)+[\\/]?|~[\\/][^\s'\"]*")


def public_text(text: str, path: str | os.PathLike | None = None) -> str:
    """``text`` fit for the page: ``path`` becomes its file name, any other absolute path or home-relative
    path becomes "(a server path)", and Python exception class names (``…Error:``) are dropped."""
    if path is not None:
        text = text.replace(str(path), Path(path).name)
    text = _PATH.sub(lambda m: m.group(0) if m.group(0).count("/") + m.group(0).count("\\") < 2
                     else "(a server path)", text)
    text = re.sub(r"\b[A-Z][A-Za-z]*(?:Error|Exception|Warning)\b:?\s*", "", text)
    return text.strip() or "the file could not be read"


def build_video_messages(turns: Sequence[tuple[str, str]], question: str) -> list[dict[str, Any]]:
    """As :func:`build_messages`, with the video (instead of an image) in the first user turn."""
    messages = build_messages(turns, question)
    messages[0]["content"][0] = {"type": "video"}
    return messages


def build_video_inputs(processor: Any, turns: Sequence[tuple[str, str]], question: str,
                       video: DecodedVideo) -> Any:
    """Tokenised multi-turn prompt + video pixel values (batch of 1), with or without torchvision."""
    from v2drop.video_inputs import video_inputs
    try:
        return video_inputs(processor, video, build_video_messages(turns, question))
    except ValueError as err:
        raise ChatInputError(f"The video could not be turned into model inputs: {err}") from None


def _media_inputs(processor: Any, turns: Sequence[tuple[str, str]], question: str,
                  media: "Image.Image | DecodedVideo") -> Any:
    if isinstance(media, DecodedVideo):
        return build_video_inputs(processor, turns, question, media)
    return build_inputs(processor, turns, question, media)


# ---------------------------------------------------------------------------------- generation
@dataclass
class RunStats:
    """Timings and memory of one of the two runs."""

    name: str
    prompt_tokens: int = 0
    vision_tokens: int = 0
    tokens: int = 0                       # generated tokens (the end-of-turn token included)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    first_token_seconds: float | None = None   # since the request started (wall clock, both runs interleaved)
    done_seconds: float | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str = ""
    kv_cache_bytes: int | None = None

    @property
    def total_seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds

    @property
    def decode_tokens_per_second(self) -> float | None:
        steps = self.tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_seconds"] = self.total_seconds
        data["decode_tokens_per_second"] = self.decode_tokens_per_second
        return data


@dataclass
class PairEvent:
    """One streaming update: both answers so far, their stats, and (at the end) the trace."""

    full_text: str
    drop_text: str
    full_done: bool
    drop_done: bool
    full: RunStats
    drop: RunStats
    trace: Trace | None
    elapsed: float
    schedule: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.full_done and self.drop_done


class _Run:
    def __init__(self, stats: RunStats, inputs: Any) -> None:
        self.stats, self.inputs = stats, inputs
        self.ids: list[int] = []
        self.next_token: torch.Tensor | None = None
        self.cache: Any = None
        self.done = False


def _to_device(inputs: Any, model: torch.nn.Module) -> dict[str, Any]:
    device = module_device(model)
    dtype = next(model.parameters()).dtype
    out = {}
    for key, value in dict(inputs).items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


def _eos_ids(model: torch.nn.Module, processor: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    tok = getattr(processor, "tokenizer", processor)
    if getattr(tok, "eos_token_id", None) is not None:
        ids.add(int(tok.eos_token_id))
    return ids


def stream_pair(
    model: torch.nn.Module,
    processor: Any,
    image: "Image.Image | DecodedVideo",
    question: str,
    history_full: Sequence[tuple[str, str]],
    history_drop: Sequence[tuple[str, str]],
    schedule: DropSchedule | str,
    *,
    method: str = "v2drop",
    max_new_tokens: int = MAX_NEW_TOKENS,
    trace_all_layers: bool = True,
    cancel: Callable[[], bool] | None = None,
) -> Iterator[PairEvent]:
    """Answer ``question`` with the unpruned model and with V²Drop, interleaved step by step.

    Each run continues its own conversation (``history_full`` / ``history_drop``: earlier
    ``(question, answer)`` pairs), so multi-turn chats stay side by side. Yields a
    :class:`PairEvent` after each prefill and each decode step; the last one has ``done`` set
    and carries the V²Drop :class:`Trace`.

    ``image`` is a PIL image or a :class:`~v2drop.video.DecodedVideo` (from
    :func:`load_video_file`; the model must take video, see :func:`check_video_model`): the video
    goes with the first user turn, and the trace's layout has one frame per token grid
    (``frames_per_layout_frame`` sampled frames each)."""
    from transformers import DynamicCache

    schedule = DropSchedule.parse(schedule) if isinstance(schedule, str) else schedule
    if isinstance(image, DecodedVideo):
        check_video_model(model)
    tokenizer = getattr(processor, "tokenizer", processor)
    device = module_device(model)
    eos = _eos_ids(model, processor)
    start = time.perf_counter()
    runs = {
        "full": _Run(RunStats("unpruned"), _to_device(_media_inputs(processor, history_full, question, image), model)),
        "drop": _Run(RunStats("V²Drop"), _to_device(_media_inputs(processor, history_drop, question, image), model)),
    }
    vision_ids = None

    def text_of(run: _Run) -> str:
        ids = [t for t in run.ids if t not in eos]
        return tokenizer.decode(ids, skip_special_tokens=True).strip()

    def event(trace: Trace | None = None) -> PairEvent:
        return PairEvent(text_of(runs["full"]), text_of(runs["drop"]), runs["full"].done, runs["drop"].done,
                         replace(runs["full"].stats), replace(runs["drop"].stats), trace, time.perf_counter() - start, str(schedule))

    def step(run: _Run, prefill: bool) -> None:
        stats = run.stats
        if prefill:
            run.cache = DynamicCache(config=model.config)
            kwargs = dict(run.inputs)
            stats.prompt_tokens = int(kwargs["input_ids"].shape[1])
            if vision_ids is not None:
                stats.vision_tokens = int(torch.isin(kwargs["input_ids"][0], vision_ids.to(device)).sum())
        else:
            kwargs = {"input_ids": run.next_token.view(1, 1)}
        if device.type == "cuda":
            torch.cuda.synchronize()
            if prefill and run is runs["full"]:
                torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        with torch.inference_mode():  # per step: grad mode is thread-local and a streaming caller
            out = model(**kwargs, cache=run.cache, use_cache=True, logits_to_keep=1)  # may resume us elsewhere
        token = int(out.logits[0, -1].argmax())
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if prefill:
            stats.prefill_seconds += elapsed
        else:
            stats.decode_seconds += elapsed
        run.ids.append(token)
        run.next_token = torch.tensor([token], device=device)
        stats.tokens = len(run.ids)
        if stats.first_token_seconds is None:
            stats.first_token_seconds = time.perf_counter() - start
        peak, kind = memory_now(device)
        if peak is not None:
            stats.peak_memory_bytes = max(stats.peak_memory_bytes or 0, peak)
            stats.memory_kind = kind
        stats.kv_cache_bytes = kv_cache_bytes(run.cache)  # the DynamicCache we passed, filled in place
        if token in eos or len(run.ids) >= max_new_tokens:
            run.done = True
            stats.done_seconds = time.perf_counter() - start

    with apply(model, schedule, method, trace_all_layers=trace_all_layers) as session:
        vision_ids = session.vision_ids
        with session.paused():
            step(runs["full"], prefill=True)
        yield event()
        step(runs["drop"], prefill=True)
        yield event()
        while not (runs["full"].done and runs["drop"].done):
            if cancel is not None and cancel():
                break
            if not runs["full"].done:
                with session.paused():
                    step(runs["full"], prefill=False)
                yield event()
            if not runs["drop"].done:
                step(runs["drop"], prefill=False)
                yield event()
        trace = session.trace
        # the engine's own numbers for the V²Drop run (same clock, measured inside its hooks)
        drop = runs["drop"].stats
        if trace.peak_memory_bytes is not None:
            drop.peak_memory_bytes, drop.memory_kind = trace.peak_memory_bytes, trace.memory_kind
        if trace.kv_cache_bytes is not None:
            drop.kv_cache_bytes = trace.kv_cache_bytes
    runs["full"].done = runs["drop"].done = True  # (also when cancelled)
    final = event(trace)
    for run in runs.values():
        run.cache = None
    yield final


# ---------------------------------------------------------------------------------- schedules
def nominal_vision_tokens(model: torch.nn.Module, last_count: int | None = None) -> int:
    """Vision tokens of one image, for schedule arithmetic before a run: the last run's count when
    known (dynamic-resolution models), else the base grid of the vision tower (LLaVA-style)."""
    if last_count:
        return int(last_count)
    vision = getattr(model.config, "vision_config", None)
    try:
        side = int(vision.image_size) // int(vision.patch_size)
        return side * side
    except (AttributeError, TypeError, ZeroDivisionError):
        return 1024


def _text_config(model: torch.nn.Module) -> Any:
    return model.config.get_text_config(decoder=True)


def num_decoder_layers(model: torch.nn.Module) -> int:
    return decoder_depth(model)


def presets_for(model: torch.nn.Module, is_embedded: bool = False) -> list[tuple[str, str, str]]:
    """``[(name, schedule text, description)]``: the model's own presets first, then the paper's
    (those that do not fit the model's depth are kept but marked), then depth-scaled ones."""
    layers = num_decoder_layers(model)
    if is_embedded:
        own = [n for n in PRESETS if n.startswith("shapes-")]
    else:
        family = adapter_class(model)
        own = list(family.own_presets(layers)) if family is not None else []
    out = [(n, PRESETS[n][0], PRESETS[n][1] + " (this model's)") for n in own]
    for name, (text, desc) in PRESETS.items():
        if name in own:
            continue
        fits = max(DropSchedule.parse(text).layers, default=0) < layers
        out.append((name, text, desc + ("" if fits else f" — does not fit this {layers}-layer model")))
    # the paper's layers 3/17/22 of 32, scaled to this depth, at a few budgets
    try:
        scaled = scale_layers(PAPER_LAYERS, layers)
    except ValueError:  # too shallow for three distinct drop layers
        return out
    for target in (0.5, 0.33, 0.15):
        try:
            sched = DropSchedule.for_budget(layers, scaled, target)
        except ValueError:
            continue
        out.append((f"scaled-{round(target * 100)}%", str(sched),
                    f"paper's layers scaled to {layers} layers, ~{round(target * 100)} % of tokens on layer average"))
    return out


def schedule_summary(schedule: DropSchedule, model: torch.nn.Module, num_vision_tokens: int,
                     num_text_tokens: int = 32) -> dict[str, Any]:
    """Validate ``schedule`` for ``model`` and predict its budget. Raises ``ValueError`` with a
    readable reason for an impossible schedule."""
    layers = num_decoder_layers(model)
    schedule.validate(layers)
    cfg = _text_config(model)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    alive = schedule.alive_per_layer(layers, num_vision_tokens)
    ratio = schedule.flops_ratio(layers, num_vision_tokens, num_text_tokens, int(cfg.hidden_size),
                                 int(cfg.intermediate_size), kv_hidden_size=kv_heads * head_dim)
    return {
        "num_layers": layers,
        "num_vision_tokens": num_vision_tokens,
        "alive_per_layer": alive,
        "average_kept": schedule.average_kept(layers, num_vision_tokens),
        "flops_ratio": ratio,
        "flops_saving": 1.0 - ratio,
    }


# ---------------------------------------------------------------------------------- model cache
@dataclass
class LoadedModel:
    model_id: str
    model: torch.nn.Module
    processor: Any
    label: str
    trained: bool = True
    is_embedded: bool = False
    note: str = ""

    @property
    def num_layers(self) -> int:
        return num_decoder_layers(self.model)

    def card(self, trust_remote_code: bool = False) -> "ModelCard":
        from v2drop.video import default_num_frames
        return ModelCard(self.model_id, self.label, self.model.config, self.is_embedded, self.trained, self.note,
                         default_num_frames(self.model), trust_remote_code)


@dataclass(frozen=True)
class ModelCard:
    """What the page needs to know about a loaded model without holding its weights (its config,
    label, default frame count): kept after the model is evicted, so that schedule and video
    handlers never have to load it again. ``presets_for``, ``schedule_summary``,
    ``supports_video`` and ``nominal_vision_tokens`` take a card where they take a model."""

    model_id: str
    label: str
    config: Any
    is_embedded: bool
    trained: bool
    note: str
    default_frames: int
    trust_remote_code: bool = False

    @property
    def num_layers(self) -> int:
        return num_decoder_layers(self)


def _pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _explain_load_error(model_id: str, err: BaseException) -> str:
    from v2drop.adapters import UnsupportedModelError, supported_architectures

    text = f"{type(err).__name__}: {err}"
    low = text.lower()
    if isinstance(err, UnsupportedModelError):
        return f"{model_id!r} loaded, but its architecture is not supported by V²Drop: {err}"
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in low:
        return f"Not enough memory to load {model_id!r}; the current model stays in use."
    if ("offline" in low or "localentrynotfound" in low or "connection" in low or "couldn't connect" in low
            or "cannot find the requested files" in low or "outgoing traffic has been disabled" in low):
        return (f"{model_id!r} is not in the local Hugging Face cache and the network is unavailable "
                "(offline mode), so it cannot be downloaded here.")
    if "repositorynotfound" in low or "is not a local folder and is not a valid model identifier" in low or \
            "not a valid model identifier" in low or "404" in low:
        return f"{model_id!r} is not a known model."
    if "unrecognized configuration class" in low or "does not recognize this architecture" in low or \
            "model type" in low and "not" in low:
        return (f"{model_id!r} is not an image-text-to-text model that this app supports "
                f"(supported families: {', '.join(supported_architectures())}).")
    if "trust_remote_code" in low:
        return f"{model_id!r} needs custom code from its repository, which this server does not run for it."
    return f"{model_id!r} could not be loaded (see the server log for details)."


class ModelRegistry:
    """Loaded models shared by all sessions, keyed by id. The embedded model is always loaded;
    at most ``max_extra`` other models are kept (least recently used first out).

    Every load goes through :meth:`load`, one at a time (``_load_lock``): a model that several
    sessions need again after an eviction is loaded once, and the others find it in the cache.
    ``policy`` (an object with ``allows(model_id, trust_remote_code) -> reason | None``, e.g.
    :class:`studio.hosting.HostingPolicy`) is asked before anything is read from disk or the hub."""

    def __init__(self, max_extra: int = 1, device: str | None = None,
                 embedded_dir: str | None = None, policy: Any = None) -> None:
        self.max_extra = max_extra
        self.device = device or _pick_device()
        self.embedded_dir = embedded_dir
        self.policy = policy
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._extra: "OrderedDict[str, LoadedModel]" = OrderedDict()
        self._cards: "OrderedDict[str, ModelCard]" = OrderedDict()
        self._embedded: LoadedModel | None = None
        self.loads = 0  # completed loads from disk or the hub (not cache hits), for tests and logs

    # embedded -------------------------------------------------------------------------------
    def _weights_path(self) -> Path:
        from shapes.model import DEFAULT_MODEL_DIR
        return Path(self.embedded_dir or DEFAULT_MODEL_DIR) / "model.safetensors"

    def embedded(self) -> LoadedModel:
        """The embedded shapes model; built untrained (and labelled so) while its weights are missing,
        and swapped for the trained one as soon as the weights appear."""
        with self._lock:
            if self._embedded is None or (not self._embedded.trained and self._weights_path().exists()):
                self._embedded = self._load_embedded()
            return self._embedded

    def _load_embedded(self) -> LoadedModel:
        from shapes import model as shapes
        label = "Embedded Shapes model (tiny LLaVA, 8 layers, 256 vision tokens; understands generated " \
                "shape scenes: colours, counts, positions, existence of circles/squares/triangles/stars)"
        try:
            model, processor = shapes.load_default(self.device, self.embedded_dir)
            return LoadedModel(EMBEDDED_ID, model, processor, label, trained=True, is_embedded=True)
        except (FileNotFoundError, OSError) as err:
            model = shapes.build_model().to(self.device).eval()
            processor = shapes.build_processor()
            log.warning("embedded weights missing (%s): %s", self._weights_path(), err)
            note = ("The embedded model's trained weights are missing, so it runs UNTRAINED with random "
                    "weights: answers are meaningless, but dropping, heatmaps and timings work.")
            return LoadedModel(EMBEDDED_ID, model, processor, label + " — UNTRAINED (weights missing)",
                               trained=False, is_embedded=True, note=note)

    # others ---------------------------------------------------------------------------------
    def get(self, model_id: str | None) -> LoadedModel:
        """A loaded model by id (the embedded one for ``None`` / :data:`EMBEDDED_ID`)."""
        if not model_id or model_id == EMBEDDED_ID:
            return self.embedded()
        with self._lock:
            if model_id not in self._extra:
                raise KeyError(model_id)
            self._extra.move_to_end(model_id)
            return self._extra[model_id]

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return [EMBEDDED_ID, *self._extra]

    def card(self, model_id: str | None) -> ModelCard:
        """The :class:`ModelCard` of a model loaded at least once (``KeyError`` otherwise); never loads."""
        if not model_id or model_id == EMBEDDED_ID:
            return self.embedded().card()
        with self._lock:
            return self._cards[model_id]

    def ensure(self, model_id: str | None) -> LoadedModel:
        """The model, loaded again (once, with the trust it was loaded with) if another session's load
        evicted it. Raises :class:`ModelLoadError` with a message for the page if that fails."""
        try:
            return self.get(model_id)
        except KeyError:
            with self._lock:
                card = self._cards.get(model_id)
            return self.load(model_id, trust_remote_code=bool(card and card.trust_remote_code))

    def load(self, model_id: str, trust_remote_code: bool = False,
             progress: Callable[[float, str], None] | None = None) -> LoadedModel:
        """Load ``model_id`` (hub id or local folder) or return it from the cache. Raises
        :class:`ModelLoadError` with a plain-language reason; the cache is unchanged on failure."""
        model_id = (model_id or "").strip()
        if not model_id or model_id == EMBEDDED_ID:
            return self.embedded()
        if len(model_id) > 200 or any(c in model_id for c in "\n\r\t"):
            raise ModelLoadError("That does not look like a model id (expected 'owner/name' or a local folder).")
        reason = self.policy.allows(model_id, trust_remote_code) if self.policy is not None else None
        if reason:
            raise ModelLoadError(reason)
        with self._load_lock:  # one load at a time; whoever waited finds the model in the cache
            with self._lock:
                if model_id in self._extra:
                    self._extra.move_to_end(model_id)
                    return self._extra[model_id]
            return self._load_new(model_id, trust_remote_code, progress)

    def _load_new(self, model_id: str, trust_remote_code: bool,
                  progress: Callable[[float, str], None] | None) -> LoadedModel:
        from v2drop.adapters import get_adapter
        from v2drop.loading import load_model

        def report(fraction: float, message: str) -> None:
            if progress is not None:
                progress(fraction, message)

        report(0.05, f"Reading the configuration of {model_id}…")
        try:
            report(0.2, f"Loading the weights of {model_id} on {self.device} (this can take a while)…")
            model, processor = load_model(model_id, device=self.device, trust_remote_code=trust_remote_code)
            report(0.85, "Checking that V²Drop can patch it…")
            get_adapter(model)
            getattr(processor, "apply_chat_template")
        except Exception as err:  # noqa: BLE001 - every failure becomes a message; cancellation passes
            log.warning("loading %r failed: %s: %s", model_id, type(err).__name__, err)
            gc.collect()
            raise ModelLoadError(_explain_load_error(model_id, err)) from err
        entry = LoadedModel(model_id, model, processor, model_id)
        with self._lock:
            self.loads += 1
            log.info("loaded model %r (load %d of this process)", model_id, self.loads)
            self._cards[model_id] = entry.card(trust_remote_code)
            while len(self._cards) > 64:  # cards are small, but typed ids are unbounded
                self._cards.popitem(last=False)
            self._extra[model_id] = entry
            while len(self._extra) > self.max_extra:
                self._extra.popitem(last=False)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        report(1.0, "Loaded.")
        return entry
