"""Procedural scenes and questions for the embedded Shapes model.

Every scene is a 128x128 RGB ``PIL.Image`` with 3-7 non-overlapping objects
(shapes ``circle, square, triangle, star``; colours ``red, green, blue, yellow,
purple, orange, white``; small or large) placed uniformly over the whole image
on a muted background (solid, linear gradient, or blocky texture, always with
mild pixel noise).  Objects are ~16-32 px wide, i.e. 2-4 vision patches of the
8 px patch grid, so every answer depends on a few of the 256 vision tokens.
About half of the large circles, squares and triangles carry a digit or a letter
(``Obj.glyph``, a 3x5 pixel font drawn 6x10 px in black or white at the object's
centre).  No question asks for the glyph: it is clutter the model must see past
(an 8 px patch holds barely a stroke of it, and the four question types already fill
the training budget).  Glyphs come from their own random stream, so every other
pixel, object and question is what it would be without them.

Question types (one-word answers), each reported separately:

``color``     "what color is the star ?"                       -> red | green | ... (7-way)
              the asked shape occurs exactly once in the scene.
``count``     "how many circles are there ?"                    -> one | two | three | four
              other objects have other shapes (uniform over 1-4).
``position``  "is the red circle on the left or the right ?"   -> left | right
              "is the red circle at the top or the bottom ?"   -> top | bottom
              the (colour, shape) pair is unique and its centre is at least
              16 px away from the image midline (no ambiguous cases).
``exist``     "is there a blue square ?"                        -> yes | no
              POPE-style probe, balanced yes/no; negatives are "hard": the scene
              usually contains the same shape in another colour and the same
              colour on another shape.

Everything is deterministic: all randomness comes from ``numpy.random.Generator``
objects seeded from explicit integers (never the global RNG).  ``sample(seed, i)``
returns the i-th example of a stream, ``benchmark(n, seed)`` the held-out
benchmark (different seed from training: training uses ``TRAIN_SEED``).

Regenerate the benchmark (JSON lines + PNGs)::

    python -m shapes.scenes --benchmark --n 1200 --out /tmp/shapes-bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 128
SHAPES = ("circle", "square", "triangle", "star")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}
COLORS = {
    "red": (215, 35, 35),
    "green": (35, 165, 50),
    "blue": (35, 75, 225),
    "yellow": (240, 215, 35),
    "purple": (135, 45, 180),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
}
COLOR_NAMES = tuple(COLORS)
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
QTYPES = ("color", "count", "position", "exist")
ANSWERS = {
    "color": COLOR_NAMES,
    "count": COUNT_WORDS[1:5],
    "position": ("left", "right", "top", "bottom"),
    "exist": ("yes", "no"),
}
TRAIN_SEED = 1234
BENCHMARK_SEED = 987654
SMALL_R = (9.0, 11.0)
LARGE_R = (13.0, 16.5)
MIDLINE_MARGIN = 16  # position targets are at least this far from the midline

# every word that can appear in a question or an answer (the tokenizer vocab)
VOCAB_WORDS = sorted(
    set(
        "what color is the how many are there on left or right at top bottom a an ?".split()
        + list(SHAPES)
        + list(PLURAL.values())
        + list(COLOR_NAMES)
        + list(COUNT_WORDS)
        + ["yes", "no", "small", "large", "which", "quadrant", "digit", "of", "image", "in",
           "and", "it", "this", "picture", "shape", "object", "objects", "describe", "answer",
           "with", "one", "word", "number", ".", ",", "0", "1", "2", "3", "4", "5", "6", "7",
           "8", "9"]
    )
)


@dataclass
class Obj:
    shape: str
    color: str
    x: float
    y: float
    r: float
    glyph: str = ""  # digit or letter drawn on the object ("" = none)
    rot: float = 0.0  # rotation of a triangle or star in radians (set when the scene is drawn)
    sx: float = 1.0  # horizontal / vertical stretch of the object in the model's square 128x128 input:
    sy: float = 1.0  # a round object on a non-square picture becomes an ellipse (``shapes.drawn``)


@dataclass
class Sample:
    image: Image.Image
    question: str
    answer: str
    qtype: str
    objects: list = field(default_factory=list)
    extra: list = field(default_factory=list)  # more (question, answer, qtype) about the same image

    def to_dict(self):
        return {
            "question": self.question,
            "answer": self.answer,
            "qtype": self.qtype,
            "objects": [o.__dict__ for o in self.objects],
        }


# --------------------------------------------------------------------------- glyphs
# 3x5 pixel font: five rows of three bits, top row first
GLYPH_FONT = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "011", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
    "A": ("010", "101", "111", "101", "101"), "E": ("111", "100", "110", "100", "111"),
    "H": ("101", "101", "111", "101", "101"), "K": ("101", "110", "100", "110", "101"),
    "L": ("100", "100", "100", "100", "111"), "P": ("110", "101", "110", "100", "100"),
    "T": ("111", "010", "010", "010", "010"), "X": ("101", "101", "010", "101", "101"),
}
GLYPHS = tuple(GLYPH_FONT)
GLYPH_SCALE = 2  # output pixels per font pixel: a glyph is 6x10 px
GLYPH_SHAPES = ("circle", "square", "triangle")  # a star's arms are too thin to hold one
GLYPH_PROB = 0.5  # share of the large objects of those shapes that carry a glyph
DARK_INK_ON = ("yellow", "white", "orange", "green")  # light colours get black ink, the rest white


def assign_glyphs(objects, rng: np.random.Generator) -> None:
    """Write a glyph on about half of the large circles, squares and triangles (in place)."""
    for o in objects:
        if o.shape in GLYPH_SHAPES and o.r >= LARGE_R[0] and rng.random() < GLYPH_PROB:
            o.glyph = _pick(rng, GLYPHS)


def _draw_glyph(draw: ImageDraw.ImageDraw, o: Obj, ss: int) -> None:
    """Draw ``o.glyph`` centred on the object, on a canvas ``ss`` times the image size."""
    ink = (20, 20, 20) if o.color in DARK_INK_ON else (240, 240, 240)
    cell = GLYPH_SCALE * ss
    left, top = o.x * ss - 1.5 * cell, o.y * ss - 2.5 * cell
    for row, bits in enumerate(GLYPH_FONT[o.glyph]):
        for col, bit in enumerate(bits):
            if bit == "1":
                x0, y0 = left + col * cell, top + row * cell
                draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=ink)


# --------------------------------------------------------------------------- drawing
def _background(rng: np.random.Generator) -> np.ndarray:
    s = IMAGE_SIZE

    def muted():
        v = rng.uniform(55, 165)
        tint = rng.uniform(-22, 22, size=3)
        return np.clip(v + tint, 0, 255)

    kind = rng.integers(3)
    if kind == 0:  # solid
        img = np.broadcast_to(muted(), (s, s, 3)).astype(np.float32)
    elif kind == 1:  # linear gradient
        c0, c1 = muted(), muted()
        ang = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / (s - 1)
        t = (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang)
        t = (t - t.min()) / (t.max() - t.min() + 1e-6)
        img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    else:  # blocky texture
        base = muted()
        cells = int(rng.choice([4, 8, 16]))
        low = rng.normal(0, 14, size=(cells, cells, 1))
        up = np.kron(low, np.ones((s // cells, s // cells, 1)))
        img = base[None, None] + up
    img = img + rng.normal(0, rng.uniform(2, 7), size=(s, s, 3))
    return np.clip(img, 0, 255).astype(np.float32)


def _polygon(shape: str, x: float, y: float, r: float, rot: float):
    if shape == "square":
        h = r * 0.85
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if shape == "triangle":
        return [
            (x + r * math.cos(rot + a), y + r * math.sin(rot + a))
            for a in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)
        ]
    if shape == "star":
        pts = []
        for k in range(10):
            a = rot - math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.42
            pts.append((x + rr * math.cos(a), y + rr * math.sin(a)))
        return pts
    raise ValueError(shape)


def render(objects, rng: np.random.Generator) -> Image.Image:
    """Draw ``objects`` on a random background (2x supersampled for anti-aliasing)."""
    bg = _background(rng)
    ss = 2
    big = Image.new("RGB", (IMAGE_SIZE * ss, IMAGE_SIZE * ss), (0, 0, 0))
    mask = Image.new("L", big.size, 0)
    d, dm = ImageDraw.Draw(big), ImageDraw.Draw(mask)
    for o in objects:
        col = tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in COLORS[o.color])
        x, y, r = o.x * ss, o.y * ss, o.r * ss
        if o.shape == "circle":
            box = [x - r * 0.92, y - r * 0.92, x + r * 0.92, y + r * 0.92]
            d.ellipse(box, fill=col)
            dm.ellipse(box, fill=255)
        else:
            o.rot = float(rng.uniform(-0.25, 0.25)) if o.shape != "square" else 0.0
            poly = _polygon(o.shape, x, y, r, o.rot)
            d.polygon(poly, fill=col)
            dm.polygon(poly, fill=255)
        if o.glyph:
            _draw_glyph(d, o, ss)
    fg = np.asarray(big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.float32)
    m = np.asarray(mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.float32)[..., None] / 255.0
    # foreground was drawn on black: un-premultiply where partially covered
    fg = np.where(m > 0, fg / np.maximum(m, 1e-3), 0)
    out = bg * (1 - m) + np.clip(fg, 0, 255) * m
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- scene layout
def _radius(rng):
    lo, hi = SMALL_R if rng.random() < 0.5 else LARGE_R
    return float(rng.uniform(lo, hi))


def _place(rng, specs, constraints=None, reach: float = 1.0):
    """Place (shape, color) specs without overlap. ``constraints[i]`` optionally
    restricts object i's centre (a callable (x, y) -> bool); ``reach`` (>= 1) is how far a
    stretched object reaches beyond its radius (``Style.reach``). Returns list[Obj] or None."""
    objs = []
    for i, (shape, color) in enumerate(specs):
        ok = False
        for _ in range(200):
            r = _radius(rng)
            x = float(rng.uniform(r * reach + 1, IMAGE_SIZE - r * reach - 1))
            y = float(rng.uniform(r * reach + 1, IMAGE_SIZE - r * reach - 1))
            if constraints and constraints.get(i) and not constraints[i](x, y):
                continue
            if all(math.hypot(x - o.x, y - o.y) > (r + o.r) * reach + 3 for o in objs):
                ok = True
                break
        if not ok:
            return None
        objs.append(Obj(shape, color, x, y, r))
    return objs


def _distractors(rng, n, forbid):
    """n random (shape, color) pairs with ``forbid(shape, color)`` false."""
    out = []
    while len(out) < n:
        s = SHAPES[rng.integers(len(SHAPES))]
        c = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
        if not forbid(s, c):
            out.append((s, c))
    return out


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _side_ok(axis, side):
    lo, hi = IMAGE_SIZE / 2 - MIDLINE_MARGIN, IMAGE_SIZE / 2 + MIDLINE_MARGIN
    if axis == "x":
        return (lambda x, y: x <= lo) if side == "left" else (lambda x, y: x >= hi)
    return (lambda x, y: y <= lo) if side == "top" else (lambda x, y: y >= hi)


def _scene_for(rng, qtype, balance=None, max_others=None):
    """Build the object list and the primary (question, answer) for ``qtype``.
    ``max_others`` caps the number of objects besides the ones the question needs
    (training curriculum; ``None`` = no cap)."""
    cap = (lambda n: n) if max_others is None else (lambda n: min(n, max_others))
    if qtype == "color":
        s, c = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES)
        n_other = cap(int(rng.integers(2, 6)))
        specs = [(s, c)] + _distractors(rng, n_other, lambda s2, c2: s2 == s)
        return specs, None, f"what color is the {s} ?", c
    if qtype == "count":
        s = _pick(rng, SHAPES)
        k = int(rng.integers(1, 5)) if balance is None else 1 + balance % 4
        n_other = cap(int(rng.integers(max(0, 3 - k), 7 - k + 1)))
        specs = [(s, _pick(rng, COLOR_NAMES)) for _ in range(k)]
        specs += _distractors(rng, n_other, lambda s2, c2: s2 == s)
        return specs, None, f"how many {PLURAL[s]} are there ?", COUNT_WORDS[k]
    if qtype == "position":
        s, c = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES)
        axis = "x" if rng.random() < 0.5 else "y"
        opts = ("left", "right") if axis == "x" else ("top", "bottom")
        side = _pick(rng, opts)
        n_other = cap(int(rng.integers(2, 6)))
        specs = [(s, c)] + _distractors(rng, n_other, lambda s2, c2: (s2, c2) == (s, c))
        a, b = opts if rng.random() < 0.5 else opts[::-1]
        q = (f"is the {c} {s} on the {a} or the {b} ?" if axis == "x"
             else f"is the {c} {s} at the {a} or the {b} ?")
        return specs, {0: _side_ok(axis, side)}, q, side
    if qtype == "exist":
        s, c = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES)
        yes = rng.random() < 0.5 if balance is None else balance % 2 == 0
        n_other = int(rng.integers(2, 6))
        specs = [(s, c)] if yes else []
        hard = []
        if rng.random() < 0.75:  # same shape, other colour
            hard.append((s, _pick(rng, [x for x in COLOR_NAMES if x != c])))
        if rng.random() < 0.75:  # same colour, other shape
            hard.append((_pick(rng, [x for x in SHAPES if x != s]), c))
        specs += hard + _distractors(rng, max(0, n_other - len(hard)), lambda s2, c2: (s2, c2) == (s, c))
        if max_others is not None:
            specs = specs[: max(1, (1 if yes else 0) + max_others)]
        order = rng.permutation(len(specs))
        specs = [specs[i] for i in order]
        return specs, None, f"is there {_article(c)} {c} {s} ?", "yes" if yes else "no"
    raise ValueError(qtype)


def derived_questions(objects, rng):
    """All unambiguous questions answerable from ``objects`` (used for multi-turn training)."""
    qs = []
    by_shape = {s: [o for o in objects if o.shape == s] for s in SHAPES}
    pairs = {(o.shape, o.color) for o in objects}
    for s, objs in by_shape.items():
        if len(objs) == 1:
            qs.append((f"what color is the {s} ?", objs[0].color, "color"))
        if 1 <= len(objs) <= 4:
            qs.append((f"how many {PLURAL[s]} are there ?", COUNT_WORDS[len(objs)], "count"))
    lo, hi = IMAGE_SIZE / 2 - MIDLINE_MARGIN, IMAGE_SIZE / 2 + MIDLINE_MARGIN
    for o in objects:
        if sum(1 for p in objects if (p.shape, p.color) == (o.shape, o.color)) != 1:
            continue
        qs.append((f"is there {_article(o.color)} {o.color} {o.shape} ?", "yes", "exist"))
        for axis, val, opts in (("x", o.x, ("left", "right")), ("y", o.y, ("top", "bottom"))):
            if lo < val < hi:
                continue
            side = opts[0] if val <= lo else opts[1]
            a, b = opts if rng.random() < 0.5 else opts[::-1]
            prep = "on" if axis == "x" else "at"
            qs.append((f"is the {o.color} {o.shape} {prep} the {a} or the {b} ?", side, "position"))
    # absent pairs, preferring hard negatives (shape or colour present)
    shapes_present = {o.shape for o in objects}
    colors_present = {o.color for o in objects}
    absent = [(s, c) for s in SHAPES for c in COLOR_NAMES if (s, c) not in pairs
              and (s in shapes_present or c in colors_present)]
    n_yes = sum(1 for q in qs if q[2] == "exist")
    for j in rng.permutation(len(absent))[:n_yes]:
        s, c = absent[j]
        qs.append((f"is there {_article(c)} {c} {s} ?", "no", "exist"))
    return qs


def caption(objects) -> str:
    """The dense caption of a scene, in reading order (top band first, left to right):
    "a large red circle at the top left , a small blue star at the bottom right ."
    Quadrants split at the midlines; used for projector alignment and the text corpus."""
    half = IMAGE_SIZE / 2
    parts = []
    for o in sorted(objects, key=lambda o: (int(o.y // (IMAGE_SIZE / 4)), o.x)):
        size = "large" if o.r >= LARGE_R[0] else "small"
        where = f"{'top' if o.y < half else 'bottom'} {'left' if o.x < half else 'right'}"
        parts.append(f"{_article(size)} {size} {o.color} {o.shape} at the {where}")
    return " , ".join(parts) + " ."


def make_sample(rng: np.random.Generator, qtype: str, n_extra: int = 0, balance: int | None = None,
                max_others: int | None = None, style=None) -> Sample:
    """One scene built for a primary question of ``qtype`` (+ ``n_extra`` derived questions).
    ``balance`` (an int) cycles the count answer / the exist yes-no answer deterministically.
    ``style``: ``None`` draws the generator's own scenes (muted backgrounds, glyphs, 128x128);
    a ``shapes.drawn.Style`` draws the same layout the way a person would in a paint program."""
    reach = 1.0 if style is None else style.reach
    while True:
        specs, cons, q, a = _scene_for(rng, qtype, balance, max_others)
        objs = _place(rng, specs, cons, reach)
        if objs is not None:
            break
    order = rng.permutation(len(objs))  # draw order / list order carries no information
    objs = [objs[i] for i in order]
    if style is None:
        assign_glyphs(objs, rng.spawn(1)[0])  # a child stream: ``rng``'s own draws stay as they were
        img = render(objs, rng)
    else:
        img = style.render(objs, rng)
    extra = []
    if n_extra > 0:
        cands = [x for x in derived_questions(objs, rng) if x[0] != q]
        for j in rng.permutation(len(cands))[:n_extra]:
            extra.append(cands[j])
    return Sample(img, q, a, qtype, objs, extra)


def sample(seed: int, index: int, qtype: str | None = None, n_extra: int = 0, balanced: bool = True,
           max_others: int | None = None, style=None) -> Sample:
    """The ``index``-th sample of the stream ``seed``.  Types go round-robin unless given;
    with ``balanced`` the count answers cycle 1-4 and exist answers alternate yes/no.
    ``style``: see ``make_sample``."""
    rng = np.random.default_rng([int(seed), int(index)])
    if qtype is None:
        qtype = QTYPES[index % len(QTYPES)]
    balance = index // len(QTYPES) if balanced else None
    return make_sample(rng, qtype, n_extra=n_extra, balance=balance, max_others=max_others, style=style)


def benchmark(n: int = 1200, seed: int = BENCHMARK_SEED) -> list[Sample]:
    """Held-out benchmark: ``n`` single-question samples, balanced over ``QTYPES``."""
    return [sample(seed, i) for i in range(n)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--benchmark", action="store_true", help="write the held-out benchmark")
    ap.add_argument("--n", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default="shapes-benchmark")
    ap.add_argument("--no-images", action="store_true", help="only write questions.jsonl")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else (BENCHMARK_SEED if args.benchmark else TRAIN_SEED)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "questions.jsonl"), "w") as f:
        for i in range(args.n):
            s = sample(seed, i)
            rec = {"id": i, "image": f"{i:05d}.png", **s.to_dict()}
            if not args.no_images:
                s.image.save(os.path.join(args.out, rec["image"]))
            f.write(json.dumps(rec) + "\n")
    print(f"wrote {args.n} questions (seed {seed}) to {args.out}")


if __name__ == "__main__":
    main()
