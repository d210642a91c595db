"""The app's example video clips (``assets/videos/``): simple animated shape scenes, each with a
description and a question, written by ``python -m shapes.videos [--out assets/videos]``."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw

from v2drop.video import write_video

from .model import REPO_ROOT

__all__ = ["EXAMPLES", "make_examples", "main"]


def _moving_shapes(num: int = 32, size: tuple[int, int] = (192, 144)) -> list[Image.Image]:
    """A red circle crossing left to right and a blue square moving down, on grey."""
    w, h = size
    frames = []
    for i in range(num):
        t = i / max(1, num - 1)
        image = Image.new("RGB", size, (200, 200, 200))
        draw = ImageDraw.Draw(image)
        cx = int(20 + t * (w - 40)); cy = h // 3
        draw.ellipse([cx - 16, cy - 16, cx + 16, cy + 16], fill=(220, 30, 30))
        sx = int(w * 0.7); sy = int(10 + t * (h - 50))
        draw.rectangle([sx, sy, sx + 28, sy + 28], fill=(30, 60, 220))
        frames.append(image)
    return frames


def _object_appears(num: int = 32, size: tuple[int, int] = (192, 144)) -> list[Image.Image]:
    """A still scene (green ground, two shapes); a yellow star appears halfway through."""
    w, h = size
    frames = []
    for i in range(num):
        image = Image.new("RGB", size, (150, 190, 240))
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, int(h * 0.7), w, h], fill=(70, 150, 70))
        draw.rectangle([20, int(h * 0.7) - 30, 50, int(h * 0.7)], fill=(120, 70, 40))
        draw.ellipse([w - 60, 15, w - 30, 45], fill=(250, 250, 250))
        if i >= num // 2:
            cx, cy, r = w // 2, int(h * 0.45), 18
            points = []
            for k in range(10):
                radius = r if k % 2 == 0 else r * 0.45
                angle = -math.pi / 2 + k * math.pi / 5
                points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
            draw.polygon(points, fill=(250, 210, 0))
        frames.append(image)
    return frames


def _count_up(num: int = 24, size: tuple[int, int] = (160, 120)) -> list[Image.Image]:
    """Squares added one at a time: 1, 2, ... 6 squares (4 frames each)."""
    w, h = size
    frames = []
    for i in range(num):
        image = Image.new("RGB", size, (240, 240, 240))
        draw = ImageDraw.Draw(image)
        for k in range(1 + i * 6 // num):
            x = 12 + (k % 3) * 50; y = 15 + (k // 3) * 50
            draw.rectangle([x, y, x + 34, y + 34], fill=(40, 40, 40))
        frames.append(image)
    return frames


EXAMPLES = {
    "moving_shapes.mp4": (_moving_shapes, "A red circle moves from left to right while a blue square moves down.",
                          "Which way does the red circle move?"),
    "object_appears.webm": (_object_appears, "A still scene; a yellow star appears halfway through the video.",
                            "What appears in the middle of the video?"),
    "count_up.gif": (_count_up, "Dark squares are added one by one until there are six.",
                     "How many squares are there at the end?"),
}


def make_examples(folder: str | os.PathLike = "assets/videos", fps: int = 8) -> list[Path]:
    """Write the example clips (and ``examples.json`` with a description and a question each)."""
    folder = Path(folder)
    written = []
    notes = {}
    for name, (build, description, question) in EXAMPLES.items():
        written.append(write_video(folder / name, build(), fps=fps, preset="veryslow"))
        notes[name] = {"description": description, "question": question}
    (folder / "examples.json").write_text(json.dumps(notes, indent=2) + "\n")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "assets" / "videos"), help="folder to write into")
    parser.add_argument("--fps", type=int, default=8)
    args = parser.parse_args(argv)
    for path in make_examples(args.out, fps=args.fps):
        print(f"{path}  {path.stat().st_size / 1024:.1f} kB")


if __name__ == "__main__":
    main()
