"""Model-family adapters: where the decoder layers are, which token ids are vision tokens, how
each vision token maps back onto the image (for overlays), whether the family takes video, and
which drop schedules it ships with.

Everything family-specific lives here, so no other module asks ``if model_type == ...``: the
family of a model, a config or a ``model_type`` string is :func:`adapter_class`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from torch import nn

from .schedule import PAPER_DEPTH
from .trace import PatchLayout

if TYPE_CHECKING:
    from .resolution import ResolutionCap

__all__ = ["ModelAdapter", "get_adapter", "adapter_class", "decoder_depth", "supported_architectures",
           "UnsupportedModelError"]


class UnsupportedModelError(ValueError):
    """The model's architecture has no adapter."""


@dataclass
class ModelAdapter:
    """Base adapter: a LLaVA-style model ``<top>.model.language_model.layers``."""

    model: nn.Module

    #: whether the family's processor and model take video input
    takes_video: ClassVar[bool] = False
    #: frames sampled from a video on a GPU (the families' own defaults)
    video_frames: ClassVar[int] = 16
    #: whether videos with different numbers of frames can share one batch (False where the
    #: processor stacks every video's frames into one tensor)
    ragged_videos: ClassVar[bool] = False

    # ------------------------------------------------------------------ family facts
    @classmethod
    def supports_video(cls, config: Any = None) -> bool:
        """Whether the family takes video; with a ``config``, also whether it names a video token."""
        if not cls.takes_video:
            return False
        if config is None:
            return True
        video_id = getattr(config, "video_token_id", None)
        return isinstance(video_id, int) and video_id >= 0

    @classmethod
    def frames_per_layout_frame(cls, config: Any = None) -> int:
        """How many sampled video frames one ``frame`` of a :class:`PatchLayout` covers."""
        return 1

    @classmethod
    def own_presets(cls, num_layers: int) -> tuple[str, ...]:
        """Names of the :data:`~v2drop.schedule.PRESETS` made for this family at this depth."""
        return ()

    # ------------------------------------------------------------------ structure
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def text_config(self) -> Any:
        return _text_config(self.config)

    def language_model(self) -> nn.Module:
        inner = getattr(self.model, "model", self.model)
        lm = getattr(inner, "language_model", None)
        if lm is None or not hasattr(lm, "layers"):
            raise UnsupportedModelError(f"cannot find the language model's decoder layers in {type(self.model).__name__}")
        return lm

    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model().layers

    def decoder_mlp(self, layer: nn.Module) -> nn.Module | None:
        """The feed-forward block of one decoder layer, called as ``mlp(hidden)`` on the layer's
        (B, L, D) hidden states and added to the residual; None where a layer has none (the engine
        then runs it on every slot)."""
        mlp = getattr(layer, "mlp", None)
        return mlp if isinstance(mlp, nn.Module) else None

    def vision_token_ids(self) -> list[int]:
        """Token ids that stand for vision features in ``input_ids``."""
        ids = []
        for name in ("image_token_id", "video_token_id"):
            value = getattr(self.config, name, None)
            if isinstance(value, int) and value >= 0:
                ids.append(value)
        if not ids:
            raise UnsupportedModelError(f"{type(self.model).__name__}'s config names no image/video token id")
        return ids

    # ------------------------------------------------------------------ layout
    def layout(self, input_ids: torch.Tensor, sample: int, model_inputs: dict[str, Any]) -> PatchLayout | None:
        """Map each vision token of ``input_ids[sample]`` to (frame, row, col); None if unknown."""
        side = self._base_side()
        runs = _vision_runs(input_ids[sample], self.vision_token_ids())
        cells, grids, kinds = [], [], []
        for _, length in runs:
            if length % (side * side):
                return None
            for _ in range(length // (side * side)):
                frame = len(grids)
                grids.append((side, side))
                kinds.append("image")
                cells += [(frame, r, c) for r in range(side) for c in range(side)]
        return PatchLayout(cells, grids, kinds)

    def _base_side(self) -> int:
        vision = self.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def base_resolution(self, processor: Any) -> "ResolutionCap":
        """The settings of the ``"base"`` image cap (:mod:`v2drop.resolution`): none for a fixed
        grid, which is already the base resolution."""
        from .resolution import ResolutionCap

        side = self._base_side()
        return ResolutionCap("base", f"fixed {side}×{side} grid (no cap needed)")


class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5 (and the embedded shapes model): one square grid of patches per image."""

    @classmethod
    def own_presets(cls, num_layers: int) -> tuple[str, ...]:
        """The paper's LLaVA-1.5-7B schedules, for a model of its depth."""
        if num_layers != PAPER_DEPTH:
            return ()
        return ("llava-1.5-192", "llava-1.5-128", "llava-1.5-64", "llava-1.5-official")


class LlavaNextAdapter(ModelAdapter):
    """LLaVA-NeXT / LLaVA-OneVision: a base-image grid, then the high-resolution crops stitched
    into one un-padded grid with a newline token closing each row (anyres); OneVision videos are
    pooled per frame to a ceil(side/2)² grid, with one newline token after the last frame."""

    def layout(self, input_ids: torch.Tensor, sample: int, model_inputs: dict[str, Any]) -> PatchLayout | None:
        side = self._base_side()
        video_id = getattr(self.config, "video_token_id", None)
        runs = _vision_runs(input_ids[sample], self.vision_token_ids())
        sizes = model_inputs.get("image_sizes")
        image_counter = _images_before(input_ids, sample, self.config.image_token_id)
        cells: list[tuple[int, int, int]] = []
        grids: list[tuple[int, int]] = []
        kinds: list[str] = []
        for token_id, length in runs:
            if token_id == video_id:
                pooled = math.ceil(side / 2)
                frames, rest = divmod(length - 1, pooled * pooled)
                if rest:
                    return None
                for _ in range(frames):
                    f = len(grids)
                    grids.append((pooled, pooled)); kinds.append("video")
                    cells += [(f, r, c) for r in range(pooled) for c in range(pooled)]
                cells.append((len(grids) - 1, -1, -1))  # trailing newline token
                continue
            f = len(grids)
            grids.append((side, side)); kinds.append("base")
            cells += [(f, r, c) for r in range(side) for c in range(side)]
            rest = length - side * side
            if rest == 1:  # single crop: base grid + one newline
                cells.append((f, -1, -1))
            elif rest > 0:
                size = sizes[image_counter] if sizes is not None and image_counter < len(sizes) else None
                shape = self._crop_grid(size, side) if size is not None else None
                if shape is None or shape[0] * (shape[1] + 1) != rest:
                    shape = _newline_grid(rest, size, self._crop_grids(side))
                if shape is None:
                    return None
                rows, cols = shape
                f = len(grids)
                grids.append((rows, cols)); kinds.append("crop")
                for r in range(rows):
                    cells += [(f, r, c) for c in range(cols)] + [(f, -1, -1)]
            image_counter += 1
        return PatchLayout(cells, grids, kinds)

    def _crop_grid(self, image_size: Any, side: int) -> tuple[int, int] | None:
        """Rows/cols of the crop grid of an image of ``image_size`` (height, width), as the model
        builds it: the best pinpoint's tile grid, un-padded to the image's aspect ratio, then (for
        OneVision's ``anyres_max_N``) shrunk to about N tiles' worth of tokens. Uses transformers'
        own functions, so it follows the installed release."""
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

        pinpoints = getattr(self.config, "image_grid_pinpoints", None)
        if not pinpoints:
            return None
        height, width = (int(v) for v in torch.as_tensor(image_size).tolist()[:2])
        tile = int(self.config.vision_config.image_size)
        tiles_h, tiles_w = get_anyres_image_grid_shape((height, width), pinpoints, tile)
        canvas = torch.empty(1, tiles_h * side, tiles_w * side)
        rows, cols = unpad_image(canvas, torch.tensor([height, width])).shape[1:]
        max_tiles = _max_tiles(getattr(self.config, "vision_aspect_ratio", None))
        if max_tiles:
            ratio = math.sqrt(rows * cols / (max_tiles * side * side))
            if ratio > 1.1:
                rows, cols = int(rows // ratio), int(cols // ratio)
        return int(rows), int(cols)

    def _crop_grids(self, side: int) -> list[tuple[int, int]]:
        """Token grids of the padded crop canvases the processor may choose (rows, cols)."""
        size = int(self.config.vision_config.image_size)
        pinpoints = getattr(self.config, "image_grid_pinpoints", None) or []
        return [(int(h) // size * side, int(w) // size * side) for h, w in pinpoints]

    def base_resolution(self, processor: Any) -> "ResolutionCap":
        """One anyres canvas, the size of the base tile: the base grid plus one crop grid."""
        from .resolution import ResolutionCap

        size = int(self.config.vision_config.image_size)
        canvas = [[size, size]]
        return ResolutionCap("base", f"base resolution: one {size}×{size} tile besides the base image",
                             image_processor={"image_grid_pinpoints": canvas}, config={"image_grid_pinpoints": canvas})


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: LLaVA-NeXT's anyres layout, and video (pooled frames)."""

    takes_video = True
    video_frames = 32


class Qwen2VLAdapter(ModelAdapter):
    """Qwen2-VL / Qwen2.5-VL: dynamic resolution; each image (or video) has a ``(t, h, w)`` patch
    grid and every ``merge × merge`` block of patches becomes one token."""

    takes_video = True
    ragged_videos = True  # each video has its own (t, h, w) grid

    @classmethod
    def frames_per_layout_frame(cls, config: Any = None) -> int:
        """Each pair of frames is one temporal slice (``temporal_patch_size``, 2)."""
        vision = getattr(config, "vision_config", None)
        return int(getattr(vision, "temporal_patch_size", 2) or 2)

    @classmethod
    def own_presets(cls, num_layers: int) -> tuple[str, ...]:
        return ("qwen2-vl-official",)

    #: merged tokens per image under the ``"base"`` image cap
    BASE_TOKENS = 256

    def base_resolution(self, processor: Any) -> "ResolutionCap":
        """``max_pixels`` of :attr:`BASE_TOKENS` merged tokens (dynamic resolution keeps the aspect)."""
        from .resolution import ResolutionCap

        image_processor = getattr(processor, "image_processor", processor)
        vision = self.config.vision_config
        token_side = int(vision.patch_size) * int(getattr(vision, "spatial_merge_size", 2))
        max_pixels = self.BASE_TOKENS * token_side * token_side
        size = image_processor.size  # transformers' SizeDict (a dataclass) or a plain dict
        capped = (dataclasses.replace(size, longest_edge=max_pixels) if dataclasses.is_dataclass(size)
                  else {**size, "longest_edge": max_pixels})
        return ResolutionCap("base", f"at most {max_pixels:,} pixels ({self.BASE_TOKENS} tokens)",
                             image_processor={"size": capped})

    def layout(self, input_ids: torch.Tensor, sample: int, model_inputs: dict[str, Any]) -> PatchLayout | None:
        merge = int(getattr(self.config.vision_config, "spatial_merge_size", 2))
        image_id, video_id = self.config.image_token_id, self.config.video_token_id
        grids_by_kind = {
            image_id: _as_rows(model_inputs.get("image_grid_thw")),
            video_id: _as_rows(model_inputs.get("video_grid_thw")),
        }
        counters = {image_id: _images_before(input_ids, sample, image_id),
                    video_id: _images_before(input_ids, sample, video_id)}
        runs = _vision_runs(input_ids[sample], [image_id, video_id])
        if any(counters[t] + sum(1 for tt, _ in runs if tt == t) > len(grids_by_kind[t]) for t in counters):
            # generate() in transformers 5.x encodes the pixels before the first forward and drops
            # the grids from the model's kwargs; the 3-D M-RoPE position ids still describe them
            return self._layout_from_positions(input_ids, sample, model_inputs.get("position_ids"), runs, video_id)
        cells, grids, kinds = [], [], []
        for token_id, length in runs:
            t, h, w = grids_by_kind[token_id][counters[token_id]]
            counters[token_id] += 1
            gh, gw = h // merge, w // merge
            if t * gh * gw != length:
                return None
            for _ in range(t):
                f = len(grids)
                grids.append((gh, gw)); kinds.append("video" if token_id == video_id else "image")
                cells += [(f, r, c) for r in range(gh) for c in range(gw)]
        return PatchLayout(cells, grids, kinds)

    @staticmethod
    def _layout_from_positions(input_ids: torch.Tensor, sample: int, position_ids: Any, runs: list,
                               video_id: int) -> PatchLayout | None:
        """(frame, row, col) from M-RoPE ids ``(3 or 4, B, L)``, whose last two rows are the
        height and width ids: within a run, rows/cols are offsets from the smallest height/width
        id, and tokens come frame after frame in raster order. (Temporal ids are not used:
        Qwen2.5-VL scales them by seconds per slice, so close frames can share one.)"""
        if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 3 or position_ids.shape[0] not in (3, 4):
            return None
        if position_ids.shape[-1] != input_ids.shape[-1]:
            return None
        pos = position_ids[-3:, min(sample, position_ids.shape[1] - 1)].long().cpu()
        ids = input_ids[sample].tolist()
        cells, grids, kinds = [], [], []
        i = 0
        for token_id, length in runs:
            while ids[i] != token_id:
                i += 1
            h_ids, w_ids = pos[1, i:i + length], pos[2, i:i + length]
            i += length
            h0, w0 = int(h_ids.min()), int(w_ids.min())
            rows, cols = int(h_ids.max()) - h0 + 1, int(w_ids.max()) - w0 + 1
            frames, rest = divmod(length, rows * cols)
            if rest:
                return None
            first = len(grids)
            for _ in range(frames):
                grids.append((rows, cols)); kinds.append("video" if token_id == video_id else "image")
            run_cells = [(first + k // (rows * cols), h - h0, w - w0)
                         for k, (h, w) in enumerate(zip(h_ids.tolist(), w_ids.tolist()))]
            if any((r, c) != divmod(k % (rows * cols), cols) for k, (_, r, c) in enumerate(run_cells)):
                return None  # not frame-major raster order: do not guess
            cells += run_cells
        return PatchLayout(cells, grids, kinds)


_ADAPTERS: dict[str, type[ModelAdapter]] = {
    "llava": LlavaAdapter,
    "llava_next": LlavaNextAdapter,
    "llava_onevision": LlavaOnevisionAdapter,
    "qwen2_vl": Qwen2VLAdapter,
    "qwen2_5_vl": Qwen2VLAdapter,
}


def supported_architectures() -> list[str]:
    return list(_ADAPTERS)


def adapter_class(model: Any) -> type[ModelAdapter] | None:
    """The adapter class of a model, a config or a ``model_type`` string; None if unsupported."""
    if isinstance(model, str):
        return _ADAPTERS.get(model)
    config = getattr(model, "config", model)
    return _ADAPTERS.get(getattr(config, "model_type", None))


def decoder_depth(model: Any) -> int:
    """Number of decoder layers of a model or its config (read from the text config)."""
    return int(_text_config(getattr(model, "config", model)).num_hidden_layers)


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for a loaded model, or :class:`UnsupportedModelError` listing what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ADAPTERS:
        raise UnsupportedModelError(
            f"model type {model_type!r} ({type(model).__name__}) is not supported; supported model types: "
            f"{', '.join(_ADAPTERS)}"
        )
    adapter = _ADAPTERS[model_type](model)
    adapter.decoder_layers()  # fail now, not mid-generation, if the structure is unexpected
    return adapter


# ---------------------------------------------------------------------- helpers
def _text_config(config: Any) -> Any:
    """The decoder's config (the top-level one for text-only configs)."""
    if hasattr(config, "get_text_config"):
        return config.get_text_config(decoder=True)
    return getattr(config, "text_config", config)


def _vision_runs(ids: torch.Tensor, vision_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs of vision tokens in a 1-D id tensor: ``[(token_id, length), ...]``."""
    runs: list[list[int]] = []
    previous = None
    for token in ids.tolist():
        if token in vision_ids:
            if token == previous:
                runs[-1][1] += 1
            else:
                runs.append([token, 1])
        previous = token if token in vision_ids else None
    return [tuple(r) for r in runs]


def _images_before(input_ids: torch.Tensor, sample: int, token_id: int | None) -> int:
    """How many images (runs of ``token_id``) earlier samples of the batch hold: grids and sizes
    come flattened over the batch."""
    if token_id is None:
        return 0
    return sum(1 for s in range(sample) for t, _ in _vision_runs(input_ids[s], [token_id]) if t == token_id)


def _as_rows(grid: Any) -> list[tuple[int, int, int]]:
    if grid is None:
        return []
    return [tuple(int(v) for v in row) for row in torch.as_tensor(grid).tolist()]


def _max_tiles(vision_aspect_ratio: str | None) -> int | None:
    """N of OneVision's ``anyres_max_N`` (how many tiles' worth of crop tokens it keeps); None
    for plain ``anyres`` (LLaVA-NeXT)."""
    prefix = "anyres_max_"
    if isinstance(vision_aspect_ratio, str) and vision_aspect_ratio.startswith(prefix):
        return int(vision_aspect_ratio[len(prefix):])
    return None


def _newline_grid(count: int, image_size: Any, canvases: Sequence[tuple[int, int]] = ()) -> tuple[int, int] | None:
    """Rows/cols of an un-padded crop grid with one newline per row: ``rows * (cols + 1) = count``.

    With the image size known, take the factorisation whose aspect ratio matches the image. Without
    it (``generate()`` does not pass ``image_sizes`` on), prefer one that fills a crop canvas along
    one axis, since un-padding only trims the other axis; else the squarest."""
    aspect = None
    if image_size is not None:
        h, w = (float(v) for v in torch.as_tensor(image_size).tolist()[:2])
        aspect = w / h if h > 0 else None
    best, best_err = None, float("inf")
    for rows in range(1, count + 1):
        if count % rows:
            continue
        cols = count // rows - 1
        if cols < 1:
            continue
        if aspect:
            err = abs(math.log((cols / rows) / aspect))
        else:
            fills = any((rows == ch and cols <= cw) or (cols == cw and rows <= ch) for ch, cw in canvases)
            err = (0 if fills else 1000) + abs(cols - rows)
        if err < best_err:
            best, best_err = (rows, cols), err
    return best
