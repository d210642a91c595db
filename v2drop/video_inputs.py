"""Model inputs for a video, with or without torchvision.

transformers' video processors (``Qwen2VLVideoProcessor``, ``LlavaOnevisionVideoProcessor``)
need torchvision. When the processor has a real video processor, :func:`video_inputs` simply
calls the processor with ``videos=``. When it has none (``load_processor`` built it image-only),
a small stand-in computes the same tensors from the processor's own *image* processor
(PIL + numpy) and is plugged into a shallow copy of the processor for one call. Either way the
processor itself expands the video token in the prompt and builds ``mm_token_type_ids``
(Qwen: 2 marks video tokens; Qwen2-VL builds its 3-D M-RoPE positions from them).

What the stand-in reproduces (``transformers`` 5.24):

* Qwen2-VL / Qwen2.5-VL (``video_processing_qwen2_vl.py``): every frame is ``smart_resize``d to a
  multiple of ``patch_size * merge_size`` within the pixel bounds, rescaled and normalised; an odd
  frame count is padded by repeating the last frame; each pair of frames
  (``temporal_patch_size`` = 2) becomes one temporal slice of ``(h/14) * (w/14)`` patches in
  merge-block order, flattened to ``pixel_values_videos`` of shape
  ``(t*h*w, 3*2*14*14)`` with ``video_grid_thw = [[t, h, w]]``; the prompt gets
  ``t*h*w / merge²`` video tokens. Qwen2.5-VL also gets ``second_per_grid_ts`` = 2 / sampled fps.
* LLaVA-OneVision (``BaseVideoProcessor``): every frame resized to the processor's
  ``size`` (the vision tower's input, 384×384 on the hub), rescaled, normalised:
  ``pixel_values_videos`` of shape ``(1, frames, 3, H, W)``; the prompt gets
  ``frames * ceil(side/2)² + 1`` video tokens (side = patches per row; the +1 is a newline).

Resizing uses PIL's bicubic filter where the real processors use torchvision's, so pixel
values differ slightly (a few 1e-2 after normalisation); shapes and token counts are identical.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image
from transformers import BatchFeature

from .adapters import adapter_class, supported_architectures
from .loading import has_video_processor
from .video import DecodedVideo, VideoLimits, default_num_frames, load_video

__all__ = ["supports_video", "video_inputs", "video_batch_inputs", "prepare_video", "load_model_video",
           "video_model_types", "frames_per_layout_frame", "layout_frame_to_video_frames"]

Frames = Union[DecodedVideo, Sequence[Image.Image], np.ndarray]
Prompt = Union[str, list]


def supports_video(model: Any) -> bool:
    """Whether ``model`` (a model, its config, or a ``model_type``) takes video input:
    LLaVA-OneVision, Qwen2-VL and Qwen2.5-VL do; LLaVA-1.5, LLaVA-NeXT and the shapes model don't."""
    family = adapter_class(model)
    config = None if isinstance(model, str) else getattr(model, "config", model)
    return family is not None and family.supports_video(config)


def video_model_types() -> list[str]:
    """The ``model_type`` of every supported family that takes video."""
    return [name for name in supported_architectures() if adapter_class(name).takes_video]


def frames_per_layout_frame(model: Any) -> int:
    """How many sampled video frames one ``frame`` of the trace's :class:`PatchLayout` covers:
    Qwen merges each pair of frames into one temporal slice (``temporal_patch_size``, 2); OneVision
    has one token grid per frame."""
    family = adapter_class(model)
    config = None if isinstance(model, str) else getattr(model, "config", model)
    return family.frames_per_layout_frame(config) if family is not None else 1


def layout_frame_to_video_frames(model: Any, layout_frame: int, num_frames: int) -> list[int]:
    """Indices into the sampled frames that layout frame ``layout_frame`` stands for (a Qwen
    slice of an odd-length video covers the last frame twice: it is listed once)."""
    step = frames_per_layout_frame(model)
    first = layout_frame * step
    return [i for i in range(first, first + step) if i < num_frames] or [num_frames - 1]


# ---------------------------------------------------------------------- public entry points
def video_inputs(
    processor: Any,
    frames: Frames,
    prompt: Prompt,
    *,
    metadata: dict | None = None,
    add_generation_prompt: bool = True,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    return_tensors: str = "pt",
) -> BatchFeature:
    """Model inputs (batch of one) for a video and a prompt.

    ``frames``: a :class:`~v2drop.video.DecodedVideo` (its metadata is used), a list of PIL
    images, or an array ``(frames, H, W, 3)`` of uint8. ``prompt``: a question (put after the video
    in a one-turn user message), a chat (list of messages whose content holds one
    ``{"type": "video"}`` entry), or text that already holds the processor's video token.
    ``max_pixels`` / ``min_pixels`` bound each frame's area for Qwen (default: the processor's).
    """
    video, meta = _frames_and_metadata(frames, metadata)
    text = _prompt_text(processor, prompt, add_generation_prompt)
    return _call(processor, [video], [meta], [text], _qwen_size(processor, max_pixels, min_pixels), return_tensors)


def video_batch_inputs(
    processor: Any,
    videos: Sequence[Frames],
    prompts: Sequence[Prompt],
    *,
    add_generation_prompt: bool = True,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    return_tensors: str = "pt",
) -> BatchFeature:
    """Model inputs for a left-padded batch of videos, one prompt each (as :func:`video_inputs`).

    Qwen2-VL / Qwen2.5-VL videos may differ in length and size (each has its own grid, so the
    samples carry different numbers of vision tokens); LLaVA-OneVision stacks its frames into one
    tensor, so its videos must have the same number of frames (``ValueError`` otherwise)."""
    if len(videos) != len(prompts) or not videos:
        raise ValueError(f"one prompt per video: got {len(videos)} videos and {len(prompts)} prompts")
    decoded = [_frames_and_metadata(v, None) for v in videos]
    texts = [_prompt_text(processor, p, add_generation_prompt) for p in prompts]
    size = _qwen_size(processor, max_pixels, min_pixels)
    tokenizer = processor.tokenizer
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return _call(processor, [v for v, _ in decoded], [m for _, m in decoded], texts, size, return_tensors)
    finally:
        tokenizer.padding_side = old_side


def _call(processor: Any, videos: list, metas: list[dict], texts: list[str], size: dict | None,
          return_tensors: str) -> BatchFeature:
    """The processor on videos and texts, with the real video processor or the stand-in."""
    kwargs: dict[str, Any] = {"return_tensors": return_tensors, "padding": len(texts) > 1}
    if has_video_processor(processor):
        videos_kwargs: dict[str, Any] = {"do_sample_frames": False, "video_metadata": metas}
        if size is not None:
            videos_kwargs["size"] = size
        if _is_qwen_processor(processor) and "cap_pixels_per_frame" in getattr(
                getattr(processor.video_processor, "valid_kwargs", None), "__annotations__", {}):
            videos_kwargs["cap_pixels_per_frame"] = False  # the stand-in's behaviour; silences a warning
        return processor(text=texts, videos=videos, videos_kwargs=videos_kwargs, **kwargs)
    proxy = copy.copy(processor)
    proxy.video_processor = _stand_in(processor, size)
    return proxy(text=texts, videos=videos, videos_kwargs={"video_metadata": metas}, **kwargs)


def prepare_video(
    model: Any,
    processor: Any,
    source: Any,
    prompt: Prompt,
    num_frames: int | None = None,
    limits: VideoLimits | None = None,
    max_side: int | None = None,
    **kwargs: Any,
) -> tuple[BatchFeature, DecodedVideo]:
    """Decode ``source``, sample ``num_frames`` (default: :func:`default_num_frames` for the
    model and its device) and build the inputs: ``(inputs, video)``. ``ValueError`` if the model
    takes no video or the file is unusable."""
    video = load_model_video(model, source, num_frames, limits, max_side)
    return video_inputs(processor, video, prompt, **kwargs), video


def load_model_video(model: Any, source: Any, num_frames: int | None = None, limits: VideoLimits | None = None,
                     max_side: int | None = None) -> DecodedVideo:
    """Decode ``source`` for ``model``, sampled to ``num_frames`` (default: :func:`default_num_frames`
    for the model and its device). ``ValueError`` if the model takes no video or the file is unusable."""
    if not supports_video(model):
        model_type = getattr(getattr(model, "config", model), "model_type", None)
        raise ValueError(f"{type(model).__name__} ({model_type}) does not take video input; "
                         f"video models: {', '.join(video_model_types())}")
    if num_frames is None:
        num_frames = default_num_frames(model)
    return load_video(source, num_frames=num_frames, limits=limits, max_side=max_side)


# ---------------------------------------------------------------------- inputs
def _frames_and_metadata(frames: Frames, metadata: dict | None) -> tuple[list[Image.Image], dict]:
    if isinstance(frames, DecodedVideo):
        images = list(frames.frames)
        meta = frames.metadata()
    else:
        if isinstance(frames, np.ndarray):
            if frames.ndim != 4:
                raise ValueError(f"a video array must be (frames, height, width, 3), got shape {frames.shape}")
            frames = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
        images = [f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
        meta = {"total_num_frames": len(images), "fps": None, "frames_indices": list(range(len(images)))}
    if not images:
        raise ValueError("the video has no frames")
    images = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        raise ValueError(f"all frames of a video must have the same size, got {sorted(sizes)}")
    if metadata:
        meta = {**meta, **metadata}
    meta.setdefault("width", images[0].width)
    meta.setdefault("height", images[0].height)
    return images, meta


def _prompt_text(processor: Any, prompt: Prompt, add_generation_prompt: bool) -> str:
    token = getattr(processor, "video_token", None)
    if token is None:
        raise ValueError(f"{type(processor).__name__} has no video token: the model does not take video")
    if isinstance(prompt, str):
        if token in prompt:
            return prompt
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    elif isinstance(prompt, (list, tuple)):
        messages = [_strip_sources(m) for m in prompt]
        count = sum(1 for m in messages for c in _contents(m) if c.get("type") == "video")
        if count != 1:
            raise ValueError(f"the chat must hold exactly one {{'type': 'video'}} entry, found {count}")
    else:
        raise ValueError(f"prompt must be text or a list of chat messages, got {type(prompt).__name__}")
    text = processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    if isinstance(text, list):
        text = text[0]
    if text.count(token) != 1:
        raise ValueError(f"the chat template produced {text.count(token)} video tokens ({token!r}), expected 1")
    return text


def _contents(message: dict) -> list[dict]:
    content = message.get("content")
    return [c for c in content if isinstance(c, dict)] if isinstance(content, list) else []


def _strip_sources(message: dict) -> dict:
    """Video entries may carry a path/url for the app's own bookkeeping; the template must not load it."""
    if not isinstance(message.get("content"), list):
        return message
    content = []
    for c in message["content"]:
        if isinstance(c, dict) and c.get("type") == "video":
            c = {"type": "video"}
        content.append(c)
    return {**message, "content": content}


def _is_qwen_processor(processor: Any) -> bool:
    return hasattr(processor.image_processor, "merge_size") and hasattr(processor.image_processor, "temporal_patch_size")


def _qwen_size(processor: Any, max_pixels: int | None, min_pixels: int | None) -> dict | None:
    if max_pixels is None and min_pixels is None:
        return None
    if not _is_qwen_processor(processor):
        raise ValueError("max_pixels / min_pixels apply to Qwen2-VL and Qwen2.5-VL only")
    size = dict(_size_dict(processor.image_processor.size))
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if size["shortest_edge"] > size["longest_edge"]:
        size["shortest_edge"] = size["longest_edge"]
    return size


def _size_dict(size: Any) -> dict:
    if size is None:
        return {}
    if isinstance(size, dict):
        return {k: v for k, v in size.items() if v is not None}
    return {k: getattr(size, k) for k in ("height", "width", "shortest_edge", "longest_edge")
            if getattr(size, k, None) is not None}


# ---------------------------------------------------------------------- stand-in video processors
def _stand_in(processor: Any, size: dict | None) -> "_VideoStandIn":
    if _is_qwen_processor(processor):
        return _QwenVideo(processor.image_processor, size)
    if type(processor).__name__.startswith("LlavaOnevision") or hasattr(processor, "num_image_tokens"):
        return _OnevisionVideo(processor.image_processor)
    raise ValueError(f"no video support for {type(processor).__name__} without torchvision")


class _VideoStandIn:
    """Enough of a transformers video processor for ``ProcessorMixin.__call__``."""

    valid_kwargs = None

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, videos: Any, video_metadata: Any = None, return_tensors: Any = None, **_: Any) -> BatchFeature:
        videos = _as_video_list(videos)
        metas = video_metadata if isinstance(video_metadata, (list, tuple)) else [video_metadata] * len(videos)
        data = self.process(videos)
        from transformers.video_utils import VideoMetadata
        data["video_metadata"] = [VideoMetadata(**(m or {"total_num_frames": len(v), "fps": None,
                                                        "frames_indices": list(range(len(v)))}))
                                  for v, m in zip(videos, metas)]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def process(self, videos: list[list[Image.Image]]) -> dict:
        raise NotImplementedError


def _as_video_list(videos: Any) -> list[list[Image.Image]]:
    if isinstance(videos, (list, tuple)) and videos and isinstance(videos[0], Image.Image):
        return [list(videos)]
    return [list(v) for v in videos]


class _QwenVideo(_VideoStandIn):
    """Qwen2-VL's video processor from its PIL image processor: resize/normalise every frame with
    the image processor, then regroup the patches of frame pairs into temporal patches."""

    def __init__(self, image_processor: Any, size: dict | None) -> None:
        super().__init__(image_processor)
        self.patch_size = int(image_processor.patch_size)
        self.merge_size = int(image_processor.merge_size)
        self.temporal_patch_size = int(image_processor.temporal_patch_size)
        self.size = size

    def process(self, videos: list[list[Image.Image]]) -> dict:
        tps, p = self.temporal_patch_size, self.patch_size
        pixel_values, grids = [], []
        for frames in videos:
            if pad := -len(frames) % tps:                      # as patchify: repeat the last frame
                frames = frames + [frames[-1]] * pad
            kwargs = {"size": self.size} if self.size else {}
            out = self.image_processor(images=frames, return_tensors="np", **kwargs)
            grid = np.asarray(out["image_grid_thw"])
            _, gh, gw = (int(v) for v in grid[0])
            if not (grid == grid[0]).all():
                raise ValueError("video frames were resized to different grids")
            f, n = len(frames), gh * gw
            # image patches: (frames, n, C, T, p, p), identical over T (a still image is repeated)
            patches = np.asarray(out["pixel_values"], dtype=np.float32).reshape(f, n, -1, tps, p, p)[:, :, :, 0]
            channels = patches.shape[2]
            patches = patches.reshape(f // tps, tps, n, channels, p, p).transpose(0, 2, 3, 1, 4, 5)
            pixel_values.append(patches.reshape(f // tps * n, channels * tps * p * p))
            grids.append([f // tps, gh, gw])
        return {"pixel_values_videos": np.concatenate(pixel_values, axis=0),
                "video_grid_thw": np.asarray(grids, dtype=np.int64)}


class _OnevisionVideo(_VideoStandIn):
    """LLaVA-OneVision's video processor: resize each frame to ``size``, rescale, normalise."""

    def process(self, videos: list[list[Image.Image]]) -> dict:
        ip = self.image_processor
        size = _size_dict(getattr(ip, "size", None))
        if "height" in size and "width" in size:
            height, width = int(size["height"]), int(size["width"])
        elif "shortest_edge" in size:
            height = width = int(size["shortest_edge"])
        else:
            raise ValueError(f"cannot tell the frame size from the image processor's size {size}")
        resample = getattr(ip, "resample", None)
        resample = Image.Resampling.BICUBIC if resample is None else Image.Resampling(int(resample))
        factor = float(getattr(ip, "rescale_factor", 1 / 255)) if getattr(ip, "do_rescale", True) else 1.0
        mean = np.asarray(getattr(ip, "image_mean", None) or [0.0, 0.0, 0.0], dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(getattr(ip, "image_std", None) or [1.0, 1.0, 1.0], dtype=np.float32).reshape(3, 1, 1)
        normalize = getattr(ip, "do_normalize", True)
        out = []
        for frames in videos:
            arrays = []
            for frame in frames:
                image = frame.convert("RGB")
                if image.size != (width, height):
                    image = image.resize((width, height), resample)
                array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) * factor
                if normalize:
                    array = (array - mean) / std
                arrays.append(array)
            out.append(np.stack(arrays))
        lengths = {len(v) for v in out}
        if len(lengths) > 1:
            raise ValueError("a batch of videos must have the same number of frames")
        return {"pixel_values_videos": np.stack(out).astype(np.float32)}

