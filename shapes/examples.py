"""Write the app's Shapes gallery with its ground truth: ``python -m shapes.examples``.

The gallery holds the first six held-out benchmark scenes (``shapes_<i>_<type>.png``) and
two pictures drawn as a visitor would draw them (``drawn_<i>_<type>.png``, from the held-out
drawn set).  ``shapes_questions.json`` keeps, per file, the question, its answer and type,
every object of the scene (``shapes.scenes.Obj`` fields, in the model's 128x128 frame) and
the vision tokens of the objects the question names (``question_patches``: indices into the
16x16 patch grid, row-major).  With the objects the app can also mark the objects of any
other question typed about the picture (``shapes.truth.question_mask``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import drawn, scenes, truth
from .model import REPO_ROOT

EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"
QUESTIONS_FILE = "shapes_questions.json"
BENCHMARK_EXAMPLES = 6
DRAWN_EXAMPLES = (13, 26)  # held-out drawn set: white landscape without anti-aliasing, black square


def gallery() -> dict[str, scenes.Sample]:
    """File name -> sample, in gallery order."""
    out = {f"shapes_{i}_{s.qtype}.png": s for i, s in enumerate(scenes.benchmark(BENCHMARK_EXAMPLES))}
    held_out = drawn.benchmark(max(DRAWN_EXAMPLES) + 1)
    out.update({f"drawn_{i}_{held_out[i].qtype}.png": held_out[i] for i in DRAWN_EXAMPLES})
    return out


def record(sample: scenes.Sample) -> dict:
    """The JSON entry of one example: question, answer, type, objects, question_patches."""
    mask = truth.question_mask(sample.question, sample.objects)
    return {**sample.to_dict(), "question_patches": [int(i) for i in mask.nonzero()[0]]}


def load_truth(directory: Path = EXAMPLES_DIR) -> dict[str, dict]:
    """File name -> its ``record`` (as written by ``main``)."""
    return json.loads((Path(directory) / QUESTIONS_FILE).read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(EXAMPLES_DIR))
    out = Path(ap.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)
    records = {}
    for name, sample in gallery().items():
        sample.image.save(out / name)
        records[name] = record(sample)
    (out / QUESTIONS_FILE).write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {len(records)} examples and {QUESTIONS_FILE} to {out}")


if __name__ == "__main__":
    main()
