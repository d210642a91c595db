"""Scenes drawn the way people draw them in a paint program.

The generator's own scenes (``shapes.scenes``) sit on muted, noisy 128x128 backgrounds.
What visitors upload is different: flat white, black, grey, light or coloured canvases,
pure palette colours, any size and aspect ratio, with or without anti-aliasing, and
often an outline.  A ``Style`` draws a scene's objects that way, on a canvas of its own
size; the model's image processor then squashes the picture to 128x128, exactly as it
does with an upload.  Object coordinates stay in the model's 128x128 frame (so questions,
patch labels and ground-truth masks need no change); ``Obj.sx``/``Obj.sy`` record how a
round object is stretched there.

* ``training_sample(seed, index, share, ...)``: the training stream with a ``share`` of
  drawn scenes (the style comes from its own random stream, so the rest of the scene
  stream is the same for every share).
* ``benchmark(n, seed)``: the held-out drawn set (``DRAWN_SEED``, never used for training),
  cycling through every background x aspect x anti-aliasing condition (``CONDITIONS``).
"""

from __future__ import annotations

import colorsys
import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from . import scenes

DRAWN_SEED = 31337  # the held-out drawn set (training streams use scenes.TRAIN_SEED + offsets)
STYLE_STREAM = 7  # third seed word of the random stream that picks a training scene's style
BACKGROUNDS = ("white", "black", "grey", "light", "colour")
ASPECTS = {"square": (288, 288), "landscape": (320, 240), "portrait": (240, 320)}
CONDITIONS = tuple(itertools.product(BACKGROUNDS, ASPECTS, (True, False)))  # 30 held-out conditions

# palette colours of common paint programs, per colour word (pure RGB, MS Paint, web names)
PAINT_COLORS = {
    "red": ((255, 0, 0), (237, 28, 36), (220, 20, 60)),
    "green": ((0, 255, 0), (34, 177, 76), (0, 128, 0)),
    "blue": ((0, 0, 255), (63, 72, 204), (30, 100, 230)),
    "yellow": ((255, 255, 0), (255, 242, 0), (255, 215, 0)),
    "purple": ((128, 0, 128), (163, 73, 164), (148, 0, 211)),
    "orange": ((255, 127, 39), (255, 165, 0), (255, 140, 0)),
    "white": ((255, 255, 255), (250, 250, 250), (240, 240, 240)),
}
SUPERSAMPLE_SIDE = 1280  # anti-aliased pictures are drawn at least 2x larger, up to about this long side, then reduced
MIN_CONTRAST = 110.0  # an object closer than this (RGB distance) to the background gets an outline


@dataclass(frozen=True)
class Style:
    """How one picture is drawn: its canvas, its size in pixels and its edges."""

    background: str = "white"  # one of BACKGROUNDS
    size: tuple[int, int] = (288, 288)  # (width, height) of the picture
    antialias: bool = True
    outline: bool = False  # every object gets a dark (or, on dark canvases, light) outline

    @property
    def stretch(self) -> tuple[float, float]:
        """(sx, sy): a round object of this picture, squashed into the model's square input,
        becomes an ellipse with these radius factors (their product is 1)."""
        w, h = self.size
        return math.sqrt(h / w), math.sqrt(w / h)

    @property
    def reach(self) -> float:
        """How far (relative to its radius) a stretched object reaches in the model's frame."""
        return max(self.stretch)

    def render(self, objects: list[scenes.Obj], rng: np.random.Generator) -> Image.Image:
        """Draw ``objects`` (model-frame coordinates) on this style's canvas; sets their
        ``rot``, ``sx`` and ``sy``."""
        w, h = self.size
        k = max(2, SUPERSAMPLE_SIDE // max(w, h)) if self.antialias else 1
        colours = [_paint_colour(o.color, rng) for o in objects]
        bg = _canvas_colour(self.background, colours, rng)
        canvas = Image.new("RGB", (w * k, h * k), bg)
        draw = ImageDraw.Draw(canvas)
        scale = math.sqrt(w * h) / scenes.IMAGE_SIZE  # model-frame radius -> picture pixels
        sx, sy = self.stretch
        for o, colour in zip(objects, colours):
            o.sx, o.sy = sx, sy
            o.rot = float(rng.uniform(-0.25, 0.25)) if o.shape in ("triangle", "star") else 0.0
            x, y = o.x * w / scenes.IMAGE_SIZE * k, o.y * h / scenes.IMAGE_SIZE * k
            r = o.r * scale * k
            edge = _outline(colour, bg) if self.outline or _distance(colour, bg) < MIN_CONTRAST else None
            width = max(1, round(r / 9)) if edge else 0
            if o.shape == "circle":
                draw.ellipse([x - 0.92 * r, y - 0.92 * r, x + 0.92 * r, y + 0.92 * r], fill=colour,
                             outline=edge, width=width)
            else:
                draw.polygon(scenes._polygon(o.shape, x, y, r, o.rot), fill=colour, outline=edge, width=width)
        return canvas.resize((w, h), Image.LANCZOS) if k > 1 else canvas


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _outline(colour: tuple[int, int, int], bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light canvases, white on dark ones (as people outline shapes)."""
    return (0, 0, 0) if sum(bg) > 3 * 100 else (255, 255, 255)


def _paint_colour(name: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A palette colour for ``name``; a third of the time slightly off (a picked, not a preset, colour)."""
    base = np.array(scenes._pick(rng, PAINT_COLORS[name]), dtype=np.int64)
    if rng.random() < 1 / 3:
        base = base + rng.integers(-12, 13, size=3)
    return tuple(int(c) for c in np.clip(base, 0, 255))


def _canvas_colour(kind: str, colours: list[tuple[int, int, int]], rng: np.random.Generator
                   ) -> tuple[int, int, int]:
    """The flat canvas colour of a ``kind`` of background.  A coloured canvas keeps its
    distance from every object's colour when it can (a person would not draw a red circle
    on red); when it cannot, ``render`` outlines the object."""
    if kind == "white":
        return (255, 255, 255)
    if kind == "black":
        return (0, 0, 0)
    if kind == "grey":
        v = int(rng.integers(70, 191))
        return (v, v, v)
    if kind == "light":
        return tuple(int(c) for c in rng.integers(205, 256, size=3))
    best, best_gap = (128, 128, 128), -1.0
    for _ in range(20):
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.25, 1.0), rng.uniform(0.35, 1.0))
        candidate = tuple(int(round(255 * c)) for c in rgb)
        gap = min((_distance(candidate, c) for c in colours), default=255.0)
        if gap >= MIN_CONTRAST:
            return candidate
        if gap > best_gap:
            best, best_gap = candidate, gap
    return best


def random_style(rng: np.random.Generator) -> Style:
    """A training style: any background, half square and half any aspect ratio from 3:5 to 5:3,
    a long side of 128-640 px, anti-aliased or not, outlined a quarter of the time."""
    aspect = 1.0 if rng.random() < 0.5 else math.exp(rng.uniform(-math.log(5 / 3), math.log(5 / 3)))
    long_side = int(rng.integers(128, 641))
    w, h = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
    return Style(background=scenes._pick(rng, BACKGROUNDS), size=(w, h), antialias=bool(rng.random() < 0.5),
                 outline=bool(rng.random() < 0.25))


def training_sample(seed: int, index: int, share: float, qtype: str | None = None, n_extra: int = 0,
                    balanced: bool = True, max_others: int | None = None) -> scenes.Sample:
    """``scenes.sample(seed, index, ...)``, drawn in a ``random_style`` with probability ``share``."""
    style = None
    if share > 0:
        style_rng = np.random.default_rng([int(seed), int(index), STYLE_STREAM])
        if style_rng.random() < share:
            style = random_style(style_rng)
    return scenes.sample(seed, index, qtype=qtype, n_extra=n_extra, balanced=balanced, max_others=max_others,
                         style=style)


def held_out_style(index: int) -> Style:
    """The style of question ``index`` of the held-out drawn set: four questions (one per type) per
    condition, cycling through ``CONDITIONS``."""
    background, aspect, antialias = CONDITIONS[(index // len(scenes.QTYPES)) % len(CONDITIONS)]
    return Style(background=background, size=ASPECTS[aspect], antialias=antialias)


def benchmark(n: int = 600, seed: int = DRAWN_SEED) -> list[scenes.Sample]:
    """The held-out drawn set: ``n`` single-question samples, types round-robin, count and exist
    answers balanced as in ``scenes.benchmark``, every condition equally often when ``n`` is a
    multiple of 120."""
    return [scenes.sample(seed, i, style=held_out_style(i)) for i in range(n)]


def condition_of(index: int) -> dict[str, object]:
    """The condition of held-out question ``index``, for per-condition tables."""
    style = held_out_style(index)
    aspect = next(name for name, size in ASPECTS.items() if size == style.size)
    return {"background": style.background, "aspect": aspect, "antialias": style.antialias}
