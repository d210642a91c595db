"""Patch overlays on the image: kept vs dropped vision tokens per layer, the variation score as a
heatmap, and the patches dropped at a given drop layer.

Every function takes the image, a :class:`v2drop.SampleTrace` (``trace.samples[0]``) and a layer,
and returns a new PIL image. Patches are placed with ``sample.layout`` (``cells[i] = (frame, row,
col)``, ``grids[frame] = (rows, cols)``), so dynamic-resolution grids (Qwen2-VL) and multi-crop
images (LLaVA-NeXT / OneVision anyres: a "base" grid and a "crop" grid) map exactly onto the
image: each frame becomes one panel (the image with that frame's grid), panels side by side.
``region`` is the part of the image the grids cover (``studio.inputs.image_region``: the centre
crop for CLIP-style processors, else the whole image).

Videos: :func:`frame_strip` takes the sampled frames instead of one image and draws one tile per
token grid of the layout (a video frame for LLaVA-OneVision; a pair of frames for Qwen2-VL /
Qwen2.5-VL, whose temporal patches merge two frames: pass ``step=frames_per_layout_frame(model)``,
the tile then shows the pair's first frame), tiles in rows.

Colours and marks: kept patches are shown as they are; patches dropped earlier are dimmed grey and
hatched ``\\``; the patches dropped *at* the shown drop layer are tinted red and hatched ``/`` in
white. The hatching, not the colour alone, tells a dropped patch from a red object or a dark
background. In the variation heatmap, tokens no longer alive carry the same grey hatching, so they
never look like tokens of low variation (the darkest colours of the map). ``outline=`` (any
overlay) draws a cyan contour around a set of vision tokens: the ones that matter for the question
(the ground truth of a generated scene, or what a visitor marked; :func:`tokens_in_mask` turns a
painted mask into tokens). ``legend=True`` adds a key under the picture: what each mark means, and
for the heatmap a colour bar with this layer's lowest and highest variation.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from v2drop.trace import PatchLayout, SampleTrace

__all__ = ["kept_overlay", "variation_heatmap", "dropped_overlay", "patch_boxes", "layer_status",
           "colormap", "DROPPED_NOW_RGB", "DEAD_RGB", "PANEL_SIZE",
           "frame_strip", "strip_tiles", "frame_labels", "contact_sheet", "TILE_SIZE", "tokens_in_mask",
           "OUTLINE_RGB", "MARK_MIN_SHARE", "sample_layout", "colorbar", "hatch_mask", "HATCH_NOW_RGB",
           "HATCH_DEAD_RGB", "kept_legend", "heat_legend"]

PANEL_SIZE = 384                 # longer side of one panel, in pixels
DEAD_RGB = (40, 40, 48)          # colour mixed into tokens no longer alive
DROPPED_NOW_RGB = (230, 30, 30)  # tokens dropped at the shown drop layer
DIM_ALPHA = 0.78                 # how strongly dead patches are dimmed
RED_ALPHA = 0.62
OUTLINE_RGB = (0, 229, 255)      # contour of the tokens that matter (cyan: apart from red, grey and the heat map)
OUTLINE_WIDTH = 3                # pixels, drawn inside the outlined patches
MARK_MIN_SHARE = 0.25            # a vision token is marked when at least this share of its patch is painted
HATCH_NOW_RGB = (255, 255, 255)  # "/" hatching of the patches dropped at the shown layer
HATCH_DEAD_RGB = (176, 176, 188) # "\\" hatching of the patches dropped earlier
HATCH = {"/": (6, 2), "\\": (9, 2)}  # pixels between hatch lines and their width, per direction

_INFERNO = np.array([  # anchor colours of a perceptually ordered map (dark -> bright)
    (0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21), (250, 193, 39),
    (252, 255, 164)], dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 (inferno-like)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0, 1) * (len(_INFERNO) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_INFERNO) - 1)
    t = (v - lo)[..., None]
    return (_INFERNO[lo] * (1 - t) + _INFERNO[hi] * t).round().astype(np.uint8)


def sample_layout(sample: SampleTrace) -> PatchLayout:
    """The sample's patch layout; without one, a single square raster grid (or ValueError)."""
    if sample.layout is not None:
        return sample.layout
    n = sample.num_vision_tokens  # no layout recorded: assume one square raster grid
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"the trace has no patch layout and {n} vision tokens do not form a square grid")
    return PatchLayout([(0, r, c) for r in range(side) for c in range(side)], [(side, side)], ["image"])


def _panel_base(image: Image.Image, region: Sequence[float] | None, size: int) -> Image.Image:
    img = image.convert("RGB")
    if region is not None:
        x0, y0, x1, y1 = region
        if (x0, y0, x1, y1) != (0, 0, img.width, img.height):
            img = img.crop((int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))))
    scale = size / max(img.width, img.height)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)


def patch_boxes(layout: PatchLayout, panel_size: tuple[int, int]) -> dict[int, tuple[int, int, int, int, int]]:
    """``{vision ordinal: (frame, x0, y0, x1, y1)}`` in panel pixels for every token that is a patch
    (newline tokens are left out). Cell edges are rounded so that neighbours share edges exactly."""
    w, h = panel_size
    out = {}
    for i, (frame, row, col) in enumerate(layout.cells):
        if row < 0 or col < 0:
            continue
        rows, cols = layout.grids[frame]
        out[i] = (frame, round(col * w / cols), round(row * h / rows), round((col + 1) * w / cols),
                  round((row + 1) * h / rows))
    return out


def _compose(panels: list[Image.Image], layout: PatchLayout) -> Image.Image:
    if len(panels) == 1:
        return panels[0]
    label_h, gap = 18, 6
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    height = max(p.height for p in panels) + label_h
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for f, panel in enumerate(panels):
        rows, cols = layout.grids[f]
        draw.text((x + 4, 3), f"{layout.kinds[f]} {f} ({rows}×{cols})", fill=(0, 0, 0))
        canvas.paste(panel, (x, label_h))
        x += panel.width + gap
    return canvas


def _render(image: Image.Image, sample: SampleTrace, region, size: int,
            colour_of, outline: Collection[int] | None = None) -> Image.Image:
    """Paint every patch: ``colour_of(ordinal) -> (rgb, alpha) or None``; one panel per frame;
    the ``outline`` tokens get a contour."""
    layout = sample_layout(sample)
    base = _panel_base(image, region, size)
    return _compose(_paint_panels([base] * len(layout.grids), layout, colour_of, outline), layout)


def _paint_panels(bases: list[Image.Image], layout: PatchLayout, colour_of,
                  outline: Collection[int] | None = None) -> list[Image.Image]:
    """One panel per layout frame: ``bases[frame]`` (all of one size) with each of the frame's
    patches blended with ``colour_of(ordinal) -> (rgb, alpha) or None``, its grid lines, and a
    contour around the ``outline`` tokens."""
    boxes = patch_boxes(layout, bases[0].size)
    arrays = [np.asarray(base, dtype=np.float32).copy() for base in bases]   # (H, W, 3) each
    hatches = {d: hatch_mask(bases[0].size, d) for d in "/\\"}              # (H, W) bool each
    for ordinal, (frame, x0, y0, x1, y1) in boxes.items():
        paint = colour_of(ordinal)
        if paint is not None:
            _paint_cell(arrays[frame], (x0, y0, x1, y1), paint, hatches)
    panels = []
    for frame, arr in enumerate(arrays):
        panel = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
        _grid_lines(panel, layout.grids[frame])
        panels.append(panel)
    if outline:
        _outline(panels, layout, boxes, set(outline))
    return panels


def hatch_mask(size: tuple[int, int], direction: str = "/") -> np.ndarray:
    """``(h, w)`` bool: the pixels of diagonal hatch lines (``"/"`` or ``"\\"``), one pattern over
    the whole panel so that the lines run on across neighbouring patches."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    phase = (xs + ys) if direction == "/" else (xs - ys)
    spacing, width = HATCH[direction]
    return (phase % spacing) < width


def _paint_cell(arr: np.ndarray, box: tuple[int, int, int, int], paint: tuple, hatches: dict) -> None:
    """Blend one patch of ``arr`` with ``paint = (rgb, alpha[, (hatch rgb, direction)])``."""
    x0, y0, x1, y1 = box
    cell = arr[y0:y1, x0:x1]
    rgb, alpha = paint[0], paint[1]
    cell[:] = cell * (1 - alpha) + np.asarray(rgb, dtype=np.float32) * alpha
    if len(paint) > 2 and paint[2] is not None:
        hatch_rgb, direction = paint[2]
        cell[hatches[direction][y0:y1, x0:x1]] = np.asarray(hatch_rgb, dtype=np.float32)


def _outline(panels: list[Image.Image], layout: PatchLayout, boxes: dict, tokens: set[int]) -> None:
    """Draw, inside each outlined patch, the sides it does not share with another outlined patch
    of its frame: one contour around each connected group of tokens."""
    where = {(layout.cells[i][0], layout.cells[i][1], layout.cells[i][2]) for i in tokens if i in boxes}
    draws = [ImageDraw.Draw(panel) for panel in panels]
    for i in tokens:
        if i not in boxes:
            continue
        frame, x0, y0, x1, y1 = boxes[i]
        _, row, col = layout.cells[i]
        w = max(1, min(OUTLINE_WIDTH, (x1 - x0) // 3, (y1 - y0) // 3))
        sides = {(row, col - 1): (x0, y0, x0 + w - 1, y1 - 1), (row, col + 1): (x1 - w, y0, x1 - 1, y1 - 1),
                 (row - 1, col): (x0, y0, x1 - 1, y0 + w - 1), (row + 1, col): (x0, y1 - w, x1 - 1, y1 - 1)}
        for (r, c), rect in sides.items():
            if (frame, r, c) not in where:
                draws[frame].rectangle(rect, fill=OUTLINE_RGB)


def tokens_in_mask(layout: PatchLayout, mask: np.ndarray, region: Sequence[float] | None = None,
                   image_size: tuple[int, int] | None = None, min_share: float = MARK_MIN_SHARE) -> list[int]:
    """The vision tokens whose patch is at least ``min_share`` covered by ``mask``.

    ``mask``: a (h, w) array over the whole image, at any resolution (bool, or coverage in [0, 1]),
    e.g. a brush layer's alpha. ``region`` (pixels of an ``image_size`` image, see
    :func:`studio.inputs.image_region`) is the part of the image the grids cover; by default the
    whole image. Each frame of ``layout`` covers that region, as in the overlays (a multi-crop
    image's base grid and crop grid both get their tokens); newline tokens are never marked."""
    cover = np.asarray(mask, dtype=np.float32)
    if cover.ndim != 2 or cover.size == 0:
        raise ValueError(f"the mask must be a non-empty 2-D array, got shape {cover.shape}")
    cover = np.clip(cover, 0.0, 1.0)
    if region is not None:
        if image_size is None:
            raise ValueError("a region needs the image size it is measured in")
        sx, sy = cover.shape[1] / image_size[0], cover.shape[0] / image_size[1]
        x0, y0, x1, y1 = region
        cover = cover[int(round(y0 * sy)):max(int(round(y1 * sy)), int(round(y0 * sy)) + 1),
                      int(round(x0 * sx)):max(int(round(x1 * sx)), int(round(x0 * sx)) + 1)]
    finest = max((max(rows, cols) for rows, cols in layout.grids), default=1)
    factor = -(-4 * finest // max(1, min(cover.shape)))  # at least 4 mask pixels per patch side
    if factor > 1:
        cover = np.repeat(np.repeat(cover, factor, axis=0), factor, axis=1)
    summed = np.pad(cover.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = cover.shape
    marked = []
    for ordinal, (frame, x0, y0, x1, y1) in patch_boxes(layout, (w, h)).items():
        area = max(1, (x1 - x0) * (y1 - y0))
        painted = summed[y1, x1] - summed[y0, x1] - summed[y1, x0] + summed[y0, x0]
        if painted / area >= min_share - 1e-6:
            marked.append(ordinal)
    return marked


def _grid_lines(panel: Image.Image, grid: tuple[int, int]) -> None:
    rows, cols = grid
    if rows > 64 or cols > 64:
        return
    draw = ImageDraw.Draw(panel, "RGBA")
    w, h = panel.size
    for c in range(1, cols):
        x = round(c * w / cols)
        draw.line([(x, 0), (x, h)], fill=(255, 255, 255, 40))
    for r in range(1, rows):
        y = round(r * h / rows)
        draw.line([(0, y), (w, y)], fill=(255, 255, 255, 40))


DROPPED_NOW = (DROPPED_NOW_RGB, RED_ALPHA, (HATCH_NOW_RGB, "/"))      # paint of a patch dropped at this layer
DROPPED_BEFORE = (DEAD_RGB, DIM_ALPHA, (HATCH_DEAD_RGB, "\\"))        # and of one dropped at an earlier layer


def layer_status(sample: SampleTrace, layer: int) -> tuple[set[int], set[int]]:
    """``(alive, dropped_now)`` ordinals at ``layer``: the tokens the layer processes, and those
    removed right before it (empty unless ``layer`` is a drop layer)."""
    alive = set(sample.alive_after(layer))
    dropped_now = set(sample.dropped_at(layer)) if layer in sample.kept else set()
    return alive, dropped_now


def kept_overlay(image: Image.Image, sample: SampleTrace, layer: int, region: Sequence[float] | None = None,
                 size: int = PANEL_SIZE, outline: Collection[int] | None = None, legend: bool = False) -> Image.Image:
    """The image with the vision tokens that layer ``layer`` processes shown as they are, the ones
    dropped before it dimmed and hatched, and the ones dropped right at it (a drop layer) tinted red
    and hatched. The ``outline`` tokens (e.g. the question's objects) get a cyan contour;
    ``legend=True`` adds the key under the picture."""
    img = _render(image, sample, region, size, _kept_colours(sample, layer), outline)
    return _stack(img, kept_legend(img.width, bool(outline))) if legend else img


def _kept_colours(sample: SampleTrace, layer: int):
    alive, dropped_now = layer_status(sample, layer)

    def colour(i: int):
        if i in alive:
            return None
        if i in dropped_now:
            return DROPPED_NOW
        return DROPPED_BEFORE

    return colour


def dropped_overlay(image: Image.Image, sample: SampleTrace, layer: int, region: Sequence[float] | None = None,
                    size: int = PANEL_SIZE, outline: Collection[int] | None = None,
                    legend: bool = False) -> Image.Image:
    """Which patches went at drop layer ``layer``: those tinted red (dropped there), grey (dropped
    at an earlier layer), untouched (still alive after it). ``ValueError`` if not a drop layer."""
    if layer not in sample.kept:
        raise ValueError(f"layer {layer} is not a drop layer of this run (drop layers: {sorted(sample.kept)})")
    return kept_overlay(image, sample, layer, region, size, outline, legend)


def variation_heatmap(image: Image.Image, sample: SampleTrace, layer: int, region: Sequence[float] | None = None,
                      size: int = PANEL_SIZE, alpha: float = 0.6, normalise: str = "layer",
                      outline: Collection[int] | None = None, legend: bool = True) -> Image.Image:
    """The variation score ``‖h_l − h_(l−1)‖₂`` of every vision token alive at ``layer``, as a colour
    map over its patch (dark = little change, bright = much); tokens no longer alive are grey and
    hatched, as in :func:`kept_overlay`. ``normalise="layer"`` stretches this layer's scores to the
    full colour range; ``"log"`` first takes log1p. Needs the run's trace made with
    ``trace_all_layers=True`` (or a drop layer). The ``outline`` tokens get a cyan contour;
    ``legend=True`` (the default) adds a colour bar with the layer's lowest and highest score."""
    img = _render(image, sample, region, size, _variation_colours(sample, layer, alpha, normalise), outline)
    return _stack(img, heat_legend(img.width, *variation_range(sample, layer, normalise))) if legend else img


def variation_range(sample: SampleTrace, layer: int, normalise: str = "layer") -> tuple[float, float]:
    """(lowest, highest) variation score at ``layer`` (after ``log1p`` for ``normalise="log"``):
    the two ends of the heatmap's colour bar."""
    return _variation_values(sample, layer, normalise)[2:]


def _variation_values(sample: SampleTrace, layer: int, normalise: str) -> tuple[list, np.ndarray, float, float]:
    entry = sample.scores.get(layer)
    if entry is None:
        raise ValueError(f"no variation scores at layer {layer}"
                         + (" (layer 0 has no previous layer to compare with)" if layer == 0 else
                            "; run with trace_all_layers=True"))
    values = np.asarray(entry["score"], dtype=np.float64)
    if normalise == "log":
        values = np.log1p(np.maximum(values, 0))
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return list(entry["index"]), values, lo, hi


def _variation_colours(sample: SampleTrace, layer: int, alpha: float = 0.6, normalise: str = "layer"):
    index, values, lo, hi = _variation_values(sample, layer, normalise)
    norm = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    colours = colormap(norm)
    table = {int(i): (tuple(int(v) for v in c), alpha) for i, c in zip(index, colours)}

    def colour(i: int):
        return table.get(i, DROPPED_BEFORE)

    return colour


def colorbar(width: int = 256, height: int = 14) -> Image.Image:
    """A horizontal legend of :func:`colormap` (left = low variation, right = high)."""
    row = colormap(np.linspace(0, 1, width))
    return Image.fromarray(np.repeat(row[None], height, axis=0))


# ------------------------------------------------------------------------------------ legends
LEGEND_ROW = 22                  # height of one legend row, in pixels
_SWATCH_BASE = (150, 160, 150)   # a mid-tone patch the swatches are painted on


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # an old Pillow or one without FreeType: the bitmap font
        return ImageFont.load_default()


def _stack(picture: Image.Image, legend: Image.Image) -> Image.Image:
    """``legend`` under ``picture`` (both as wide)."""
    canvas = Image.new("RGB", (picture.width, picture.height + legend.height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    canvas.paste(legend, (0, picture.height))
    return canvas


def _swatch(paint: tuple | None, side: int, outline: bool = False) -> Image.Image:
    """One patch of the legend, painted as the overlays paint a patch."""
    arr = np.full((side, side, 3), _SWATCH_BASE, dtype=np.float32)
    if paint is not None:
        _paint_cell(arr, (0, 0, side, side), paint, {d: hatch_mask((side, side), d) for d in "/\\"})
    img = Image.fromarray(arr.astype(np.uint8))
    if outline:
        ImageDraw.Draw(img).rectangle((0, 0, side - 1, side - 1), outline=OUTLINE_RGB, width=OUTLINE_WIDTH)
    return img


def _key_rows(width: int, entries: list[tuple[Image.Image, str]]) -> Image.Image:
    """Swatch + label entries flowed into rows that fit ``width``."""
    font, side, pad = _font(), LEGEND_ROW - 6, 6
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed, x, row = [], pad, 0
    for swatch, label in entries:
        need = side + 4 + int(draw.textlength(label, font=font)) + 2 * pad
        if x > pad and x + need > width:
            x, row = pad, row + 1
        placed.append((x, row, swatch, label))
        x += need
    canvas = Image.new("RGB", (width, (row + 1) * LEGEND_ROW), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for x, r, swatch, label in placed:
        y = r * LEGEND_ROW + 3
        canvas.paste(swatch, (x, y))
        draw.text((x + side + 4, y + 1), label, fill=(0, 0, 0), font=font)
    return canvas


def kept_legend(width: int, outline: bool = False) -> Image.Image:
    """The key of :func:`kept_overlay`: kept, dropped at this layer, dropped earlier (and the
    outline of what matters)."""
    side = LEGEND_ROW - 6
    entries = [(_swatch(None, side), "kept"), (_swatch(DROPPED_NOW, side), "dropped at this layer"),
               (_swatch(DROPPED_BEFORE, side), "dropped earlier")]
    if outline:
        entries.append((_swatch(None, side, outline=True), "what matters"))
    return _key_rows(width, entries)


def heat_legend(width: int, lo: float, hi: float) -> Image.Image:
    """The colour bar of :func:`variation_heatmap`: ``lo`` (dark) to ``hi`` (bright), and the
    hatched grey of tokens already dropped (they have no score)."""
    font, pad, side = _font(), 6, LEGEND_ROW - 6
    label = "dropped earlier"
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    key_w = side + 4 + int(draw.textlength(label, font=font)) + pad
    bar_w = max(40, width - 2 * pad - key_w - pad)
    canvas = Image.new("RGB", (width, 2 * LEGEND_ROW), (255, 255, 255))
    canvas.paste(colorbar(bar_w, side), (pad, 3))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, LEGEND_ROW + 1), f"low {lo:.3g}", fill=(0, 0, 0), font=font)
    high = f"{hi:.3g} high"
    draw.text((pad + bar_w - int(draw.textlength(high, font=font)), LEGEND_ROW + 1), high, fill=(0, 0, 0), font=font)
    middle = "variation this layer"
    if draw.textlength(middle + f"low {lo:.3g}" + high, font=font) + 24 < bar_w:
        draw.text((pad + (bar_w - int(draw.textlength(middle, font=font))) // 2, LEGEND_ROW + 1), middle,
                  fill=(90, 90, 90), font=font)
    x = pad + bar_w + pad
    canvas.paste(_swatch(DROPPED_BEFORE, side), (x, 3))
    draw.text((x + side + 4, 4), label, fill=(0, 0, 0), font=font)
    return canvas


# ------------------------------------------------------------------------------------ video
TILE_SIZE = 192                  # longer side of one frame tile of a strip, in pixels
_LABEL_H, _GAP = 16, 4


def frame_labels(num_layout_frames: int, num_frames: int, step: int = 1,
                 timestamps: Sequence[float] | None = None) -> list[str]:
    """One label per layout frame: the sampled frame(s) it stands for and, if known, the time."""
    out = []
    for f in range(num_layout_frames):
        first = min(f * step, max(0, num_frames - 1))
        last = min(f * step + step - 1, max(0, num_frames - 1))
        label = f"frame {first}" if last == first else f"frames {first}-{last}"
        if timestamps is not None and first < len(timestamps):
            label += f" · {timestamps[first]:.1f} s"
        out.append(label)
    return out


def strip_tiles(frames: Sequence[Image.Image], sample: SampleTrace, layer: int, mode: str = "kept",
                step: int = 1, size: int = TILE_SIZE, alpha: float = 0.6, normalise: str = "layer",
                ) -> list[Image.Image]:
    """The tiles of :func:`frame_strip`, unlabelled: one per layout frame (token grid)."""
    if not frames:
        raise ValueError("no frames to draw on")
    if mode == "kept":
        colour_of = _kept_colours(sample, layer)
    elif mode == "dropped":
        if layer not in sample.kept:
            raise ValueError(f"layer {layer} is not a drop layer of this run (drop layers: {sorted(sample.kept)})")
        colour_of = _kept_colours(sample, layer)
    elif mode == "variation":
        colour_of = _variation_colours(sample, layer, alpha, normalise)
    else:
        raise ValueError(f"mode must be 'kept', 'dropped' or 'variation', got {mode!r}")
    layout = sample_layout(sample)
    step = max(1, int(step))
    bases = [_panel_base(frames[min(f * step, len(frames) - 1)], None, size) for f in range(len(layout.grids))]
    if not bases:
        return []
    bases = [base.resize(bases[0].size) if base.size != bases[0].size else base for base in bases]
    return _paint_panels(bases, layout, colour_of)


def frame_strip(frames: Sequence[Image.Image], sample: SampleTrace, layer: int, mode: str = "kept",
                step: int = 1, timestamps: Sequence[float] | None = None, size: int = TILE_SIZE,
                per_row: int = 8, alpha: float = 0.6, normalise: str = "layer", legend: bool = False) -> Image.Image:
    """A video run at decoder layer ``layer`` as a strip of frame tiles (rows of ``per_row``).

    ``frames``: the sampled frames the model saw (``DecodedVideo.frames``); ``step``: sampled
    frames per layout frame (``frames_per_layout_frame(model)``: 2 for Qwen2-VL / Qwen2.5-VL,
    1 for LLaVA-OneVision). ``mode``: ``"kept"`` (as :func:`kept_overlay`: alive patches clear,
    earlier drops dimmed, drops at this layer red), ``"dropped"`` (the same, but ``ValueError``
    unless ``layer`` is a drop layer) or ``"variation"`` (as :func:`variation_heatmap`). Each tile
    is labelled with its frame(s), time and alive tokens of that frame; ``legend=True`` adds the key
    (the colour bar in ``"variation"`` mode) under the strip."""
    tiles = strip_tiles(frames, sample, layer, mode, step, size, alpha, normalise)
    layout = sample_layout(sample)
    alive = set(sample.alive_after(layer))
    totals = [0] * len(tiles)
    kept = [0] * len(tiles)
    for i, (f, _, _) in enumerate(layout.cells):
        totals[f] += 1
        kept[f] += i in alive
    labels = frame_labels(len(tiles), len(frames), step, timestamps)
    strip = _tile_rows(tiles, [f"{label} · {k}/{t}" for label, k, t in zip(labels, kept, totals)], per_row)
    if not legend:
        return strip
    key = heat_legend(strip.width, *variation_range(sample, layer, normalise)) if mode == "variation" else \
        kept_legend(strip.width)
    return _stack(strip, key)


def contact_sheet(frames: Sequence[Image.Image], timestamps: Sequence[float] | None = None,
                  size: int = TILE_SIZE, per_row: int = 8) -> Image.Image:
    """The sampled frames of a video as labelled tiles (the app's preview of what the model sees)."""
    if not frames:
        raise ValueError("no frames to draw")
    first = _panel_base(frames[0], None, size)
    tiles = [first] + [_panel_base(f, None, size).resize(first.size) for f in frames[1:]]
    return _tile_rows(tiles, frame_labels(len(tiles), len(tiles), 1, timestamps), per_row)


def _tile_rows(tiles: list[Image.Image], labels: list[str], per_row: int) -> Image.Image:
    cols = max(1, min(per_row, len(tiles)))
    rows = -(-len(tiles) // cols)
    tw, th = tiles[0].size
    canvas = Image.new("RGB", (cols * tw + (cols - 1) * _GAP, rows * (th + _LABEL_H) + (rows - 1) * _GAP),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for f, tile in enumerate(tiles):
        x = (f % cols) * (tw + _GAP)
        y = (f // cols) * (th + _LABEL_H + _GAP)
        draw.text((x + 2, y + 2), labels[f], fill=(0, 0, 0))
        canvas.paste(tile, (x, y + _LABEL_H))
    return canvas
