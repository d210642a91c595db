"""Ground truth for the gallery's generated scenes: which vision tokens show the objects that a
question names.

A gallery picture is recognised by its decoded pixels, never by a file name a visitor sends:
:class:`GroundTruth` hashes every example listed in ``assets/examples/shapes_questions.json``
(written by ``python -m shapes.examples``) once, at start, and looks an upload up by the same
hash. A copy of an example uploaded from anywhere gets its truth; a changed pixel, and any other
picture, gets none.

The objects' geometry is kept in the Shapes model's 128×128 frame, i.e. over the whole (squashed)
picture. On that model's own 16×16 token grid the truth is :func:`shapes.truth.question_mask`
exactly; on any other patch layout (hub models, multi-crop grids, centre crops) the objects are
drawn at the picture's resolution and a token counts when at least a quarter of its patch is
covered (:func:`visualize.overlay.tokens_in_mask`) or when it holds an object's centre: the rule of
the question masks, applied to every grid of the layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from shapes import scenes, truth
from studio.inputs import ChatInputError, load_image
from v2drop.trace import PatchLayout
from visualize.overlay import tokens_in_mask

__all__ = ["GroundTruth", "Scene", "TruthTokens", "pixel_key", "question_tokens", "is_shapes_grid", "objects_raster",
           "centre_tokens", "EXAMPLES_DIR", "QUESTIONS_FILE"]

log = logging.getLogger("v2drop.app")
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
QUESTIONS_FILE = "shapes_questions.json"
RASTER_SIDE = 512  # longer side of the drawn object mask for layouts other than the Shapes grid


def pixel_key(image: Image.Image) -> str:
    """A hash of the decoded picture: its size and RGB pixels (what the model sees, whatever the file)."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Scene:
    """One gallery picture whose objects are known (``shapes.scenes.Obj``, in the 128×128 frame)."""

    name: str
    objects: tuple[scenes.Obj, ...]


@dataclass(frozen=True)
class TruthTokens:
    """The vision tokens of the objects a question names, and how they were found."""

    tokens: list[int]
    objects: list[scenes.Obj]
    exact: bool                 # True: the Shapes model's own 16×16 grid (shapes.truth); False: mapped geometry


class GroundTruth:
    """The gallery's scenes by pixel hash; built once at start, read-only afterwards."""

    def __init__(self, directory: Path = EXAMPLES_DIR) -> None:
        self._scenes: dict[str, Scene] = {}
        self._records: dict[str, dict] = {}   # name -> the example's own question and answer
        try:
            records = json.loads((Path(directory) / QUESTIONS_FILE).read_text())
        except (OSError, ValueError):
            log.warning("no ground truth: %s is missing or unreadable", QUESTIONS_FILE)
            return
        for name, record in records.items():
            try:
                image, _ = load_image(Path(directory) / name)  # the same decoding as an upload
                objects = tuple(truth.objects_from_dicts(record["objects"]))
            except (ChatInputError, KeyError, TypeError):
                log.warning("ground truth: example %s skipped", name)
                continue
            self._scenes[pixel_key(image)] = Scene(name, objects)
            self._records[name] = {"question": record.get("question", ""), "answer": record.get("answer", "")}

    def __len__(self) -> int:
        return len(self._scenes)

    def scene_of(self, image: Image.Image) -> Scene | None:
        """The gallery scene this picture is (same size and pixels), or None."""
        return self._scenes.get(pixel_key(image))

    def by_name(self, name: str | None) -> Scene | None:
        return next((s for s in self._scenes.values() if s.name == name), None) if name else None

    def record(self, name: str | None) -> dict | None:
        """The gallery example's own question and stored answer (``shapes_questions.json``)."""
        return dict(self._records[name]) if name in self._records else None


def is_shapes_grid(layout: PatchLayout, region: Sequence[float], image_size: tuple[int, int]) -> bool:
    """Whether ``layout`` is one 16×16 grid over the whole picture: the Shapes model's tokens, for
    which :func:`shapes.truth.question_mask` is the exact answer."""
    whole = tuple(round(v) for v in region) == (0, 0, image_size[0], image_size[1])
    raster = [(0, i // truth.GRID, i % truth.GRID) for i in range(truth.GRID * truth.GRID)]
    return whole and [tuple(g) for g in layout.grids] == [(truth.GRID, truth.GRID)] and \
        [tuple(c) for c in layout.cells] == raster


def objects_raster(objects: Sequence[scenes.Obj], image_size: tuple[int, int], side: int = RASTER_SIDE) -> np.ndarray:
    """(h, w) bool mask over the picture (longer side ``side``) of ``objects``, drawn from their
    geometry in the 128×128 frame (:func:`shapes.truth.draw_object`)."""
    w, h = image_size
    scale = side / max(w, h)
    mw, mh = max(1, round(w * scale)), max(1, round(h * scale))
    fx, fy = mw / scenes.IMAGE_SIZE, mh / scenes.IMAGE_SIZE
    mask = Image.new("L", (mw, mh), 0)
    draw = ImageDraw.Draw(mask)
    for obj in objects:
        truth.draw_object(draw, obj, fx, fy)
    return np.asarray(mask) > 127


def question_tokens(scene: Scene, question: str, layout: PatchLayout, region: Sequence[float],
                    image_size: tuple[int, int]) -> TruthTokens:
    """The vision tokens (of a run with ``layout``) that show the objects ``question`` names."""
    objects = truth.question_objects(question, list(scene.objects))
    if not objects:
        return TruthTokens([], [], True)
    if is_shapes_grid(layout, region, image_size):
        return TruthTokens([int(i) for i in truth.question_mask(question, list(scene.objects)).nonzero()[0]],
                           objects, True)
    tokens = set(tokens_in_mask(layout, objects_raster(objects, image_size), region, image_size))
    return TruthTokens(sorted(tokens | centre_tokens(layout, objects, region, image_size)), objects, False)


def centre_tokens(layout: PatchLayout, objects: Sequence[scenes.Obj], region: Sequence[float],
                  image_size: tuple[int, int]) -> set[int]:
    """In every grid of ``layout``, the token whose patch holds an object's centre (as
    :func:`shapes.truth.object_mask` always counts it), for centres inside ``region``."""
    x0, y0, x1, y1 = region
    where = {tuple(cell): i for i, cell in enumerate(layout.cells)}
    out = set()
    for obj in objects:
        u = (obj.x / scenes.IMAGE_SIZE * image_size[0] - x0) / max(x1 - x0, 1e-9)
        v = (obj.y / scenes.IMAGE_SIZE * image_size[1] - y0) / max(y1 - y0, 1e-9)
        if not (0 <= u < 1 and 0 <= v < 1):
            continue
        for frame, (rows, cols) in enumerate(layout.grids):
            token = where.get((frame, int(v * rows), int(u * cols)))
            if token is not None:
                out.add(token)
    return out
