"""Time of the app's one-click drop-layer sweep (``studio.layer_sweep``) on the embedded model: every
gallery shape example's own question, at the budget of a schedule, first drop at every reachable
layer for V²Drop, random and uniform. Not a timed test: a command that prints a table and writes JSON.

    python -m benchmarks.layer_sweep                                  # the default schedule, 1 thread
    python -m benchmarks.layer_sweep --schedule 2:0.6,4:0.5,6:0.3 --threads 2 --repeats 3

Per example: the runs, the median seconds over ``--repeats``, and V²Drop's answers per first layer
(right/wrong against the stored answer), so the table also shows what the sweep teaches.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"


def run(schedule_text: str | None, repeats: int, model_dir: str) -> dict:
    """Sweep every gallery example ``repeats`` times; the JSON-ready result."""
    import torch

    from shapes import truth
    from shapes.model import load_default
    from studio.inputs import load_image
    from studio.layer_sweep import run_layer_sweep
    from v2drop.adapters import decoder_depth
    from v2drop.schedule import DropSchedule, default_schedule

    model, processor = load_default("cpu", model_dir=model_dir)
    n = model.config.image_seq_length
    reference = DropSchedule.parse(schedule_text) if schedule_text else default_schedule(decoder_depth(model), n)
    records = json.loads((EXAMPLES / "shapes_questions.json").read_text())
    rows = []
    for name, record in records.items():
        image, _ = load_image(EXAMPLES / name)
        tokens = [int(i) for i in truth.question_mask(record["question"],
                                                      truth.objects_from_dicts(record["objects"])).nonzero()[0]]
        seconds = []
        for repeat in range(repeats):
            start = time.perf_counter()
            sweep = run_layer_sweep(model, processor, image, record["question"], [], reference, n, tokens=tokens,
                                    expected=record["answer"], seed=repeat)
            seconds.append(time.perf_counter() - start)
        v2 = {str(r.first_layer): f"{r.answer}{'' if r.right else ' (wrong)'}"
              for r in sweep.rows if r.method == "v2drop"}
        rows.append(dict(example=name, question=record["question"], runs=len(sweep.rows),
                         median_seconds=statistics.median(seconds), seconds=seconds, v2drop=v2))
    return dict(schedule=str(reference), repeats=repeats, threads=torch.get_num_threads(), torch=torch.__version__,
                cpu=platform.processor() or platform.machine(), rows=rows)


def table(result: dict) -> str:
    lines = [f"one-click sweep at the budget of `{result['schedule']}` ({result['threads']} thread(s), "
             f"median of {result['repeats']})", "", "| example | runs | seconds | V²Drop per first layer |",
             "|---|---|---|---|"]
    for r in result["rows"]:
        answers = ", ".join(f"{k}: {v}" for k, v in r["v2drop"].items())
        lines.append(f"| {r['example']} | {r['runs']} | {r['median_seconds']:.2f} | {answers} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    import torch

    ap = argparse.ArgumentParser(prog="python -m benchmarks.layer_sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedule", default=None, help="reference schedule (default: the model's default rule)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=str(ROOT / "assets" / "shapes-llava"))
    ap.add_argument("--json", default="results/layer_sweep.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.schedule, args.repeats, args.model)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(table(result), flush=True)
    print(f"wrote {args.json}", flush=True)
    return result


if __name__ == "__main__":
    main()
