"""Ground truth for every vision token of a generated scene.

The generator knows each object's exact geometry, so for any scene it can say which of the
256 vision tokens (16x16 patches of 8 px in the model's 128x128 input) show which object,
and which of those objects a question names.  That turns "did the dropping keep what
matters?" from a guess into a measurement (the share of the question's object patches
still alive at each layer; see ``v2drop.trace`` for what is alive).

* ``draw_object(draw, obj, sx, sy)``: the object's exact outline on any canvas;
* ``object_coverage(obj)``: the (16, 16) share of each patch the object covers;
* ``object_mask(obj)``: the patches that belong to it (a quarter covered, or its centre);
* ``question_objects(question, objects)``: the objects a question is about;
* ``question_mask(question, objects)``: the patches of those objects, as a (256,) mask.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from . import scenes

GRID = 16  # patches per side
PATCH = scenes.IMAGE_SIZE // GRID  # 8 px
RASTER = 4  # the masks are drawn this many times finer than the 128x128 input
MIN_COVER = 0.25  # a patch belongs to an object when at least this share of it is covered
_SHAPE_OF_WORD = {**{w: w for w in scenes.SHAPES}, **{p: s for s, p in scenes.PLURAL.items()}}


def draw_object(draw: ImageDraw.ImageDraw, obj: scenes.Obj, scale_x: float, scale_y: float) -> None:
    """Fill ``obj``'s exact outline on ``draw``, a canvas ``scale_x`` by ``scale_y`` times the model's
    128x128 frame (the generator's own outline: radius, rotation and stretch)."""
    if obj.shape == "circle":
        rx, ry = 0.92 * obj.r * obj.sx, 0.92 * obj.r * obj.sy
        draw.ellipse([(obj.x - rx) * scale_x, (obj.y - ry) * scale_y, (obj.x + rx) * scale_x,
                      (obj.y + ry) * scale_y], fill=255)
    else:
        outline = scenes._polygon(obj.shape, 0.0, 0.0, obj.r, obj.rot)
        draw.polygon([((obj.x + px * obj.sx) * scale_x, (obj.y + py * obj.sy) * scale_y) for px, py in outline],
                     fill=255)


def object_coverage(obj: scenes.Obj) -> np.ndarray:
    """(16, 16) float in [0, 1]: the share of each patch that ``obj`` covers, from its exact
    geometry (radius, rotation and, on non-square pictures, stretch) in the model's input."""
    size = scenes.IMAGE_SIZE * RASTER
    mask = Image.new("L", (size, size), 0)
    draw_object(ImageDraw.Draw(mask), obj, RASTER, RASTER)
    pixels = np.asarray(mask, dtype=np.float32) / 255.0
    cell = PATCH * RASTER
    return pixels.reshape(GRID, cell, GRID, cell).mean(axis=(1, 3))


def centre_patch(obj: scenes.Obj) -> int:
    """Index (row-major, like the vision tokens) of the patch holding the object's centre."""
    return min(GRID - 1, int(obj.y // PATCH)) * GRID + min(GRID - 1, int(obj.x // PATCH))


def object_mask(obj: scenes.Obj, min_cover: float = MIN_COVER) -> np.ndarray:
    """(256,) bool: the vision tokens that show ``obj`` (at least ``min_cover`` of the patch
    covered; the centre patch always)."""
    mask = (object_coverage(obj) >= min_cover).ravel()
    mask[centre_patch(obj)] = True
    return mask


def question_objects(question: str, objects: list[scenes.Obj]) -> list[scenes.Obj]:
    """The objects ``question`` is about: every object of the shape it names, narrowed by a colour
    word right before the shape ("the red circle").  Empty when nothing matches (an "is there ...?"
    whose answer is no) or the question names no shape."""
    words = question.lower().split()
    for i, word in enumerate(words):
        if word in _SHAPE_OF_WORD:
            colour = words[i - 1] if i > 0 and words[i - 1] in scenes.COLORS else None
            return [o for o in objects if o.shape == _SHAPE_OF_WORD[word] and colour in (None, o.color)]
    return []


def question_mask(question: str, objects: list[scenes.Obj]) -> np.ndarray:
    """(256,) bool: the vision tokens of the objects ``question`` is about (all False when none)."""
    mask = np.zeros(GRID * GRID, dtype=bool)
    for obj in question_objects(question, objects):
        mask |= object_mask(obj)
    return mask


def objects_mask(objects: list[scenes.Obj]) -> np.ndarray:
    """(256,) bool: the vision tokens of every object in the scene (the rest is background)."""
    mask = np.zeros(GRID * GRID, dtype=bool)
    for obj in objects:
        mask |= object_mask(obj)
    return mask


def objects_from_dicts(records: list[dict]) -> list[scenes.Obj]:
    """Objects back from ``Sample.to_dict()["objects"]`` (the benchmark's and the examples' JSON)."""
    return [scenes.Obj(**record) for record in records]
