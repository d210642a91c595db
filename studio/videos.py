"""Video input for the chat: the app's limits, the frame count, decoding an upload into sampled
frames, and multi-turn inputs with the video in the first user turn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from studio.inputs import ChatInputError, build_messages, public_text
from v2drop.video import SUPPORTED_EXTENSIONS, DecodedVideo, VideoLimits, load_video

__all__ = ["check_video_model", "check_num_frames", "load_video_file", "build_video_messages", "build_video_inputs",
           "VIDEO_MODELS", "MAX_VIDEO_FRAMES", "APP_VIDEO_LIMITS"]

VIDEO_MODELS = "LLaVA-OneVision, Qwen2-VL and Qwen2.5-VL"
MAX_VIDEO_FRAMES = 32
#: what the app accepts (the library's defaults allow more): 100 MB, 5 minutes, 1080p (in the header and
#: in every decoded frame), and 20 s of decoding per sampling (the operator's V2DROP_VIDEO_DECODE_SECONDS)
APP_VIDEO_LIMITS = VideoLimits(max_bytes=100 * 1024 * 1024, max_duration=5 * 60.0, max_frames=18_000,
                               max_pixels=1920 * 1080,
                               max_decode_seconds=float(os.environ.get("V2DROP_VIDEO_DECODE_SECONDS") or 20))


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
    except (TypeError, ValueError, OverflowError):  # not echoed: it may be anything, of any length
        raise ChatInputError(f"The number of frames must be a whole number between 1 and {max_frames}.") from None
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
