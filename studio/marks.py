"""Hand-marked "what matters": the visitor brushes (or boxes) part of the picture, and the vision
tokens whose patch is at least a quarter painted become the tokens the what-matters chart follows.

A mark is a coverage mask over the whole picture (any resolution, longer side at most
:data:`MAX_MARK_SIDE`), kept as a grey PNG in the session's folder, so that it maps onto whatever
patch layout the next run has (:func:`visualize.overlay.tokens_in_mask`). It comes from the
editor's layers (their painted pixels: alpha > 0), never from a file a visitor names: Gradio
hands the handler decoded arrays of files it received through its own upload route.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from studio.inputs import ChatInputError

__all__ = ["MAX_MARK_SIDE", "BRUSH_COLOUR", "mask_from_editor", "mask_from_box", "save_mask", "load_mask",
           "editor_value", "painted_share", "brush_size"]

MAX_MARK_SIDE = 1024  # a mark is stored at most this long (a coverage map: finer than any patch grid)
UNREADABLE = "The mark could not be read: paint it again on the picture."
BRUSH_COLOUR = ("#00e5ff", 0.6)  # the outlines' cyan, half transparent


def brush_size(image_size: tuple[int, int] | None) -> int | str:
    """A brush radius of about 1/32 of the picture's longer side (half a patch of the Shapes model)."""
    return max(2, round(max(image_size) / 32)) if image_size else "auto"


def _fit(mask: np.ndarray) -> np.ndarray:
    """``mask`` (bool or coverage) as float coverage, reduced by area averaging to at most MAX_MARK_SIDE."""
    cover = mask.astype(np.float32)
    h, w = cover.shape
    if max(h, w) <= MAX_MARK_SIDE:
        return cover
    scale = MAX_MARK_SIDE / max(h, w)
    image = Image.fromarray((cover * 255).astype(np.uint8), "L")
    small = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _painted(layer: Any) -> np.ndarray:
    """The painted pixels of one editor layer (an RGBA array: alpha > 0; a 2-D array: > 0)."""
    if not isinstance(layer, np.ndarray) or layer.size == 0:
        raise ChatInputError(UNREADABLE)
    if layer.ndim == 2:
        return layer > 0
    if layer.ndim == 3 and layer.shape[2] == 4:
        return layer[..., 3] > 0
    raise ChatInputError(UNREADABLE)


def mask_from_editor(value: Any) -> np.ndarray | None:
    """The coverage mask of the editor's layers (all of them together), or None when nothing is
    painted. Layers of another size than the picture are stretched over it. Anything that is not
    the editor's decoded value raises :class:`ChatInputError` (a message for the page)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("layers") or [], list):
        raise ChatInputError(UNREADABLE)
    union = None
    for layer in value.get("layers") or []:
        painted = _painted(layer)
        if union is not None and painted.shape != union.shape:
            size = (union.shape[1], union.shape[0])
            painted = np.asarray(Image.fromarray(painted).resize(size, Image.Resampling.NEAREST))
        union = painted if union is None else union | painted
    if union is None or not union.any():
        return None
    return _fit(union)


def mask_from_box(box: Sequence[Any], image_size: tuple[int, int]) -> np.ndarray:
    """The mask of a box ``(x0, y0, x1, y1)`` in pixels of the picture (clamped to it). An empty,
    inverted or non-numeric box raises :class:`ChatInputError`."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ChatInputError("A box is four numbers: x0, y0, x1, y1 in pixels of the picture.") from None
    w, h = image_size
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ChatInputError("A box is four numbers: x0, y0, x1, y1 in pixels of the picture.")
    x0, x1 = sorted((min(max(x0, 0.0), w), min(max(x1, 0.0), w)))
    y0, y1 = sorted((min(max(y0, 0.0), h), min(max(y1, 0.0), h)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ChatInputError(f"The box is empty inside the {w}×{h} picture: give two opposite corners.")
    scale = min(1.0, MAX_MARK_SIDE / max(w, h))
    mw, mh = max(1, round(w * scale)), max(1, round(h * scale))
    mask = np.zeros((mh, mw), dtype=np.float32)
    mask[round(y0 * scale):max(round(y1 * scale), round(y0 * scale) + 1),
         round(x0 * scale):max(round(x1 * scale), round(x0 * scale) + 1)] = 1.0
    return mask


def painted_share(mask: np.ndarray) -> float:
    """The share of the picture that the mark covers."""
    return float(np.asarray(mask, dtype=np.float32).mean())


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    Image.fromarray((np.clip(mask, 0, 1) * 255).round().astype(np.uint8), "L").save(path)


def load_mask(path: str | Path) -> np.ndarray:
    """A stored mark (the session's own file) as coverage in [0, 1]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def editor_value(image_path: str | None, mask: np.ndarray | None = None) -> dict | None:
    """What the editor shows: the picture as its background and, if given, the mark as its layer
    (cyan, half transparent, the size of the picture)."""
    if not image_path:
        return None
    layers = []
    if mask is not None:
        with Image.open(image_path) as image:
            size = image.size
        alpha = Image.fromarray((np.clip(mask, 0, 1) * 160).astype(np.uint8), "L")
        alpha = alpha.resize(size, Image.Resampling.NEAREST)
        layer = Image.new("RGBA", size, (0, 229, 255, 0))
        layer.putalpha(alpha)
        layers.append(layer)
    return {"background": image_path, "layers": layers, "composite": None}
