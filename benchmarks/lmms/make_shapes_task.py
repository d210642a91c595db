"""Write the ``shapes_heldout`` lmms-eval task's data file from the held-out benchmark.

    python -m benchmarks.lmms.make_shapes_task [--n 1200] [--out DIR]

Writes ``shapes_heldout.parquet`` (columns ``id, image, question, answer, qtype``; images as PNG,
so pixels are exact) from ``shapes.scenes.benchmark(n)``: question ``i`` is the same one that
``python -m shapes.evaluate`` asks as its ``i``-th. Without ``--out`` the file goes beside the
task's YAML (``benchmarks/lmms/shapes_task/``); with ``--out`` the YAML and ``utils.py`` are
copied there too, so that ``--include_path DIR`` holds a complete task. Needs ``datasets``
(installed with lmms-eval).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Sequence

from shapes import scenes

TASK_DIR = Path(__file__).resolve().parent / "shapes_task"
DATA_FILE = "shapes_heldout.parquet"

__all__ = ["TASK_DIR", "DATA_FILE", "write_task"]


def write_task(n: int = 1200, out: str | Path | None = None, seed: int = scenes.BENCHMARK_SEED,
               sizes: Sequence[tuple[int, int]] = ()) -> Path:
    """Write the data file (and, for a folder other than the task's, its YAML and utils); return the folder.
    With ``sizes`` ((width, height), ...), image ``i`` is resized to ``sizes[i % len(sizes)]``: a
    mixed-size variant, whose batches mix vision-token counts on dynamic-resolution models."""
    import datasets

    folder = Path(out) if out is not None else TASK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if folder.resolve() != TASK_DIR:
        for name in ("shapes_heldout.yaml", "utils.py"):
            shutil.copyfile(TASK_DIR / name, folder / name)
    samples = scenes.benchmark(n, seed=seed)
    images = [s.image.resize(sizes[i % len(sizes)]) if sizes else s.image for i, s in enumerate(samples)]
    features = datasets.Features({"id": datasets.Value("int32"), "image": datasets.Image(),
                                  "question": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "qtype": datasets.Value("string")})
    table = datasets.Dataset.from_dict({
        "id": list(range(n)), "image": images, "question": [s.question for s in samples],
        "answer": [s.answer for s in samples], "qtype": [s.qtype for s in samples]}, features=features)
    table.to_parquet(str(folder / DATA_FILE))
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1200, help="questions (the first n of the held-out benchmark)")
    ap.add_argument("--out", default=None, help="task folder (default: benchmarks/lmms/shapes_task)")
    ap.add_argument("--sizes", default="", help="mixed sizes, e.g. 128x64,64x128,96x96 (width x height)")
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",") if size]
    folder = write_task(args.n, args.out, sizes=sizes)
    print(f"wrote {folder / DATA_FILE} ({args.n} questions); run lmms-eval with --include_path {folder}")


if __name__ == "__main__":
    main()
