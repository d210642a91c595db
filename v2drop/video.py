"""Decode uploaded videos with PyAV and sample frames uniformly.

    from v2drop.video import load_video, default_num_frames
    video = load_video("clip.mp4", num_frames=default_num_frames(model))   # DecodedVideo
    video.frames        # list of PIL RGB images
    video.timestamps    # seconds, one per frame
    video.metadata()    # dict for transformers' VideoMetadata (fps, frame indices, ...)

Every failure (unreadable file, no video stream, no decodable frame, a file over the limits)
is a ``ValueError`` with a message meant for the person who uploaded the file; PyAV's own
exceptions never escape.

``python -m v2drop.video --probe FILE`` decodes a file and prints what was sampled; the example
clips of ``assets/videos/`` are written by ``python -m shapes.videos``.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Union

import numpy as np
from PIL import Image

__all__ = [
    "VideoLimits", "DecodedVideo", "load_video", "sample_indices", "default_num_frames",
    "SUPPORTED_EXTENSIONS", "CPU_NUM_FRAMES", "write_video",
]

VideoSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO]

SUPPORTED_EXTENSIONS = (".mp4", ".webm", ".mov", ".gif", ".mkv", ".avi", ".m4v")

#: frames sampled by default on CPU (keeps the prompt short enough for an interactive run)
CPU_NUM_FRAMES = 8


@dataclass(frozen=True)
class VideoLimits:
    """What :func:`load_video` refuses. ``None`` switches a limit off."""

    max_bytes: int | None = 200 * 1024 * 1024     # file size
    max_duration: float | None = 10 * 60.0        # seconds
    max_frames: int | None = 36_000               # frames in the stream (10 min at 60 fps)
    max_pixels: int | None = 3840 * 2160          # width * height of one frame (4K), header and every decoded frame
    max_decode_seconds: float | None = None       # wall time decoding may take for one sampling


@dataclass
class DecodedVideo:
    """Frames sampled from a video, with where they came from."""

    frames: list[Image.Image]            # RGB
    timestamps: list[float]              # seconds from the start of the stream, one per frame
    indices: list[int]                   # index of each frame among all frames of the stream
    total_frames: int                    # frames in the stream
    fps: float                           # average frame rate of the stream
    duration: float                      # seconds
    width: int
    height: int
    container: str = ""                  # demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "gif"
    codec: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    def metadata(self) -> dict[str, Any]:
        """Keyword form of ``transformers.video_utils.VideoMetadata`` for these frames."""
        return {
            "total_num_frames": self.total_frames, "fps": self.fps, "width": self.width, "height": self.height,
            "duration": self.duration, "video_backend": "pyav", "frames_indices": list(self.indices),
        }


# ---------------------------------------------------------------------- sampling
def sample_indices(total: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``range(total)``, first and last frame included
    (``np.linspace(0, total - 1, n)`` rounded, as LLaVA-OneVision's evaluation does). A video
    with fewer frames than asked gives all its frames, each once."""
    if total <= 0:
        return []
    if num_frames is None or num_frames <= 0:
        raise ValueError(f"num_frames must be a positive number of frames, got {num_frames}")
    if num_frames >= total:
        return list(range(total))
    if num_frames == 1:
        return [(total - 1) // 2]
    return [int(round(i * (total - 1) / (num_frames - 1))) for i in range(num_frames)]


def default_num_frames(model: Any = None, device: Any = None) -> int:
    """Frames to sample for ``model`` (a loaded model, its config, or a ``model_type`` string):
    :data:`CPU_NUM_FRAMES` on CPU, else the family's own default (its adapter's ``video_frames``)."""
    if device is None and model is not None and hasattr(model, "parameters"):
        from .memory import module_device  # here: it imports torch, which decoding does not need

        device = module_device(model)
    if device is None or str(device).split(":")[0] == "cpu":
        return CPU_NUM_FRAMES
    from .adapters import adapter_class  # here: the adapters import torch, the decoder does not need it

    family = adapter_class(model) if model is not None else None
    return family.video_frames if family is not None else 16


# ---------------------------------------------------------------------- decoding
def load_video(
    source: VideoSource,
    num_frames: int = CPU_NUM_FRAMES,
    limits: VideoLimits | None = None,
    max_side: int | None = None,
    name: str | None = None,
    seek_after: int | None = 300,
) -> DecodedVideo:
    """Decode ``source`` (a path, the file's bytes, or a binary file object) and return
    ``num_frames`` frames sampled uniformly (all frames if the video has fewer).

    ``max_side`` shrinks frames whose longer side is larger (aspect kept), to bound memory;
    ``None`` keeps the decoded size (the processors resize anyway). ``name`` is used in error
    messages (defaults to the file name). Videos of more than ``seek_after`` frames are read by
    seeking to each sampled frame instead of decoding every frame, when that decodes fewer frames
    (the keyframes decide; ``None``: never seek); ``extra["decoded_frames"]`` says how many were.
    Raises ``ValueError`` for anything that is not a readable, non-empty video within ``limits``.
    """
    import av  # imported here so that the rest of v2drop works without PyAV

    limits = limits or VideoLimits()
    label = name or (os.path.basename(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "the upload")
    opener = _opener(source, label, limits)
    try:
        total, stream_info = _count_frames(av, opener, label, limits)
        if total == 0:
            raise ValueError(f"{label} holds no video frames (the video stream is empty)")
        wanted = sample_indices(total, num_frames)
        budget = _Budget(limits, label)
        decoded = None
        if _seeking_pays(stream_info, wanted, seek_after):
            decoded = _decode_seeking(av, opener, wanted, stream_info["frame_pts"], budget, max_side)
        if decoded is None:
            decoded = _decode(av, opener, wanted, budget, max_side)
        frames, timestamps, indices = decoded
    except ValueError:
        raise
    except MemoryError:
        raise ValueError(f"{label} is too large to decode in memory") from None
    except Exception as err:  # av.error.FFmpegError and anything else PyAV raises mid-stream
        raise ValueError(f"could not decode {label}: {_describe(err)}") from None
    if not frames:
        raise ValueError(f"{label} holds no decodable video frames")
    fps = stream_info["fps"] or (len(frames) / stream_info["duration"] if stream_info["duration"] else 0.0)
    if not fps:
        fps = 24.0
    duration = stream_info["duration"] or total / fps
    return DecodedVideo(
        frames=frames, timestamps=timestamps, indices=indices, total_frames=total, fps=float(fps),
        duration=float(duration), width=stream_info["width"], height=stream_info["height"],
        container=stream_info["container"], codec=stream_info["codec"], extra={"decoded_frames": budget.decoded},
    )


class _Budget:
    """What decoding one sampling may cost: every decoded frame is checked against the pixel limit
    (the stream header can lie about the size: an MJPEG stream of 64×64 may carry 16000×16000 frames)
    before it is converted, and the time spent against ``max_decode_seconds``; both stop at once."""

    def __init__(self, limits: VideoLimits, label: str) -> None:
        self.limits, self.label, self.decoded = limits, label, 0
        self.deadline = None if limits.max_decode_seconds is None else time.monotonic() + limits.max_decode_seconds

    def check(self, frame: Any) -> None:
        self.decoded += 1
        pixels, limit = frame.width * frame.height, self.limits.max_pixels
        if limit is not None and pixels > limit:
            raise ValueError(f"{self.label} has a frame of {frame.width}x{frame.height}, over the {limit:,}-pixel "
                             "limit per frame")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ValueError(f"decoding {self.label} takes more than the {self.limits.max_decode_seconds:g} s this "
                             "server allows for one video (its keyframes may be far apart); upload a shorter or "
                             "smaller clip, or sample fewer frames")


def _seeking_pays(info: dict, wanted: list[int], seek_after: int | None) -> bool:
    """Whether seeking to each wanted frame decodes fewer frames than one pass from the start: each
    seek lands on the keyframe before its frame and decodes from there, so a stream with one keyframe
    would be decoded from the start once per sampled frame."""
    frame_pts, keys = info["frame_pts"], info["keyframes"]
    if frame_pts is None or seek_after is None or len(frame_pts) <= seek_after or not keys:
        return False
    cost, key = 0, 0
    for index in wanted:
        while key + 1 < len(keys) and keys[key + 1] <= index:
            key += 1
        cost += index - keys[key] + 1 if keys[key] <= index else index + 1
    return cost < max(wanted) + 1


class _opener:
    """Opens the source again for each pass (counting, decoding)."""

    def __init__(self, source: VideoSource, label: str, limits: VideoLimits) -> None:
        self.label = label
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.path, self.data = None, bytes(source)
            size = len(self.data)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(os.fspath(source))
            if not path.exists():
                raise ValueError(f"{label}: no such file")
            if not path.is_file():
                raise ValueError(f"{label} is not a file")
            self.path, self.data = path, None
            size = path.stat().st_size
        elif hasattr(source, "read"):
            if hasattr(source, "seek"):
                source.seek(0)
            self.path, self.data = None, source.read()
            if not isinstance(self.data, (bytes, bytearray)):
                raise ValueError(f"{label}: the file object must be opened in binary mode")
            size = len(self.data)
        else:
            raise ValueError(f"cannot read a video from a {type(source).__name__}; pass a path, bytes or a binary file")
        if size == 0:
            raise ValueError(f"{label} is empty (0 bytes)")
        if limits.max_bytes is not None and size > limits.max_bytes:
            raise ValueError(f"{label} is {_mb(size)}, over the {_mb(limits.max_bytes)} limit for videos")
        self.size = size

    def open(self, av: Any) -> Any:
        target = str(self.path) if self.path is not None else io.BytesIO(self.data)
        try:
            return av.open(target, mode="r")
        except Exception as err:
            raise ValueError(f"could not read {self.label} as a video ({_describe(err)}); supported formats: "
                             f"{', '.join(e.lstrip('.') for e in SUPPORTED_EXTENSIONS)}") from None


def _video_stream(container: Any, label: str) -> Any:
    streams = list(container.streams.video)
    if not streams:
        raise ValueError(f"{label} has no video stream" + (" (audio only?)" if container.streams.audio else ""))
    return streams[0]


def _count_frames(av: Any, opener: _opener, label: str, limits: VideoLimits) -> tuple[int, dict]:
    """Check the limits and count the frames by demuxing (no decoding): the count stored in
    the header is missing or wrong for webm, gif and some mp4 files."""
    with opener.open(av) as container:
        stream = _video_stream(container, label)
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if limits.max_pixels is not None and width * height > limits.max_pixels:
            raise ValueError(f"{label} is {width}x{height}, over the {limits.max_pixels:,}-pixel limit per frame")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        if limits.max_duration is not None and duration is not None and duration > limits.max_duration:
            raise ValueError(f"{label} lasts {duration:.1f} s, over the {limits.max_duration:g} s limit for videos")
        header_frames = int(stream.frames or 0)
        if limits.max_frames is not None and header_frames > limits.max_frames:
            raise ValueError(f"{label} has {header_frames} frames, over the {limits.max_frames} frame limit")
        count = 0
        pts: list[int | None] = []
        key_pts: set[int | None] = set()
        for packet in container.demux(stream):
            if packet.size == 0 or packet.dts is None and packet.pts is None:
                continue  # flush packets
            count += 1
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.add(packet.pts)
            if limits.max_frames is not None and count > limits.max_frames:
                raise ValueError(f"{label} has more than {limits.max_frames} frames, over the limit for videos")
        if duration is None and fps:
            duration = count / fps
            if limits.max_duration is not None and duration > limits.max_duration:
                raise ValueError(f"{label} lasts {duration:.1f} s, over the {limits.max_duration:g} s limit for videos")
        # presentation order: the i-th displayed frame has the i-th smallest packet pts
        frame_pts = sorted(pts) if pts and None not in pts and len(set(pts)) == len(pts) else None
        keyframes = [i for i, p in enumerate(frame_pts) if p in key_pts] if frame_pts else []
        info = {"fps": fps, "duration": duration, "width": width, "height": height, "frame_pts": frame_pts,
                "keyframes": keyframes,
                "container": container.format.name if container.format else "", "codec": ctx.name or ""}
        return count, info


def _decode(av: Any, opener: _opener, wanted: list[int], budget: _Budget, max_side: int | None):
    """Decode frames in order, keeping those at ``wanted``. If the decoder yields fewer frames
    than packets were counted (or the tail is damaged), the last decoded frame stands in for
    the missing ones, once."""
    want = set(wanted)
    last_wanted = max(wanted)
    frames: list[Image.Image] = []
    timestamps: list[float] = []
    indices: list[int] = []
    last: tuple[int, Any] | None = None
    with opener.open(av) as container:
        stream = _video_stream(container, budget.label)
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or 0) or 24.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                budget.check(frame)
                last = (index, frame)
                if index in want:
                    frames.append(_to_rgb(frame, max_side))
                    timestamps.append(_time(frame, index, rate))
                    indices.append(index)
                if index >= last_wanted:
                    break
        except av.error.FFmpegError:
            if last is None:
                raise
        if last is not None and (not indices or indices[-1] < last_wanted) and last[0] not in indices:
            index, frame = last
            frames.append(_to_rgb(frame, max_side))
            timestamps.append(_time(frame, index, rate))
            indices.append(index)
    return frames, timestamps, indices


def _decode_seeking(av: Any, opener: _opener, wanted: list[int], frame_pts: list[int], budget: _Budget,
                    max_side: int | None):
    """Seek to the keyframe before each wanted frame and decode up to it. Returns None when the
    stream does not land on the expected timestamps (the caller then decodes sequentially)."""
    frames: list[Image.Image] = []
    timestamps: list[float] = []
    with opener.open(av) as container:
        stream = _video_stream(container, budget.label)
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or 0) or 24.0
        for index in wanted:
            target = frame_pts[index]
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError:
                return None
            found = None
            for frame in container.decode(stream):
                budget.check(frame)
                if frame.pts is None:
                    return None
                if frame.pts >= target:
                    found = frame if frame.pts == target else None
                    break
            if found is None:
                return None
            frames.append(_to_rgb(found, max_side))
            timestamps.append(_time(found, index, rate))
    return frames, timestamps, list(wanted)


def _time(frame: Any, index: int, rate: float) -> float:
    return float(frame.time) if frame.time is not None else index / rate


def _to_rgb(frame: Any, max_side: int | None) -> Image.Image:
    image = Image.fromarray(frame.to_ndarray(format="rgb24"))
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    return image


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


# ---------------------------------------------------------------------- writing
_CODECS = {".mp4": ("libx264", "yuv420p"), ".mov": ("libx264", "yuv420p"), ".m4v": ("libx264", "yuv420p"),
           ".mkv": ("libx264", "yuv420p"), ".webm": ("libvpx", "yuv420p"), ".gif": ("gif", "rgb8"),
           ".avi": ("mpeg4", "yuv420p")}


def write_video(path: str | os.PathLike, frames: Iterable[Image.Image | np.ndarray], fps: int = 8,
                quality: str | None = None, preset: str = "medium") -> Path:
    """Encode RGB frames into ``path``; the container and codec follow the extension
    (mp4/mov/mkv: H.264, webm: VP8, gif: GIF, avi: MPEG-4). Sizes are made even for yuv420p."""
    import av

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CODECS:
        raise ValueError(f"cannot write {suffix!r} videos; supported: {', '.join(_CODECS)}")
    codec, pix_fmt = _CODECS[suffix]
    arrays = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f, dtype=np.uint8) for f in frames]
    if not arrays:
        raise ValueError("no frames to write")
    h, w = arrays[0].shape[:2]
    if pix_fmt == "yuv420p":
        h, w = h - h % 2, w - w % 2
        arrays = [a[:h, :w] for a in arrays]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            stream.options = {"crf": quality or "28", "preset": preset}
        elif codec == "libvpx":
            stream.options = {"crf": quality or "30", "b": "200k"}
        for array in arrays:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", metavar="FILE", help="decode FILE and print what was sampled")
    parser.add_argument("--frames", type=int, default=CPU_NUM_FRAMES)
    args = parser.parse_args(argv)
    if args.probe:
        try:
            video = load_video(args.probe, num_frames=args.frames)
        except ValueError as err:
            raise SystemExit(f"error: {err}")
        print(f"{video.container} / {video.codec}: {video.total_frames} frames, {video.fps:.2f} fps, "
              f"{video.duration:.2f} s, {video.width}x{video.height}")
        print("sampled", video.indices, "at", [f"{t:.2f}" for t in video.timestamps])
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
