"""Reproduce the paper's LLaVA-1.5-7B image table with lmms-eval, and set our numbers beside the paper's.

    python -m benchmarks.lmms.paper_table run --gpus 8 --out results/lmms/llava-1.5-7b [--dry-run]
    python -m benchmarks.lmms.paper_table collect --out results/lmms/llava-1.5-7b

``run`` launches one ``accelerate launch ... -m lmms_eval`` per row (the unpruned model, FastV,
PyramidDrop and V²Drop at the paper's budgets) on the six benchmarks; ``--dry-run`` prints the
commands. ``collect`` reads what lmms-eval wrote and prints the table (markdown): each cell is
"ours (paper)", plus the relative average (mean of score ÷ unpruned score), the layer-averaged
vision tokens, the prefill time per sample and the peak memory that the v2drop model logged.

Budgets: V²Drop runs the paper's presets (``llava-1.5-192/128/64``); FastV and PyramidDrop run
their own layers at V²Drop's layer-averaged budget, by the rule ``python -m benchmarks.bench``
uses (:func:`benchmarks.bench.matched_schedule`), so every row of a budget keeps as many tokens.
"""

from __future__ import annotations

import argparse
import glob
import json
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from v2drop import DropSchedule

MODEL_ID = "llava-hf/llava-1.5-7b-hf"
TASK_DIR = Path(__file__).resolve().parent / "paper_tasks"


@dataclass(frozen=True)
class Benchmark:
    """One column: the lmms-eval task, the metric keys summed into its score, and their scale."""

    column: str
    task: str
    metrics: tuple[str, ...]
    scale: float = 1.0


BENCHMARKS = (
    Benchmark("GQA", "gqa", ("exact_match,none",), 100.0),
    Benchmark("SQA", "scienceqa_img", ("exact_match,none",), 100.0),
    Benchmark("TextVQA", "textvqa_val_ocr", ("exact_match,none",), 100.0),
    Benchmark("POPE", "pope", ("pope_f1_score,none",), 100.0),
    Benchmark("MME", "mme", ("mme_perception_score,none", "mme_cognition_score,none")),
    Benchmark("MMB", "mmbench_en_dev_static", ("gpt_eval_score,none",)),
)


@dataclass(frozen=True)
class Row:
    """One row of the table: a method at a budget, and what the paper reports for it."""

    name: str
    method: str
    schedule: str
    tokens: int
    paper: dict[str, float] = field(default_factory=dict)   # column -> score
    paper_average: float | None = None                      # relative, %


def _paper(*scores: float) -> dict[str, float]:
    return dict(zip((b.column for b in BENCHMARKS), scores))


# the paper's numbers (docs/lmms-eval.md cites them; /work/shared/paper-notes.md section 2)
ROWS = (
    Row("vanilla", "none", "none", 576, _paper(61.9, 69.5, 58.2, 85.9, 1862, 64.6), 100.0),
    Row("fastv-192", "fastv", "3:0.2674", 192, _paper(52.7, 67.3, 52.5, 64.8, 1612, 61.2), 88.2),
    Row("pdrop-192", "pdrop", "8:0.2604,16:0.2604,24:0.2604", 192, _paper(57.1, 68.8, 56.1, 82.3, 1766, 63.2), 96.0),
    Row("v2drop-192", "v2drop", "llava-1.5-192", 192, _paper(58.5, 69.3, 55.6, 85.1, 1826, 63.7), 97.6),
    Row("fastv-128", "fastv", "3:0.1476", 128, _paper(49.6, 60.2, 50.6, 59.6, 1490, 56.1), 81.7),
    Row("pdrop-128", "pdrop", "3:0.4167,8:0.4167,16:0.4167,24:0.4167", 128, {}, 93.6),
    Row("v2drop-128", "v2drop", "llava-1.5-128", 128, _paper(56.3, 68.8, 53.8, 80.9, 1712, 61.8), 94.0),
    Row("v2drop-64", "v2drop", "llava-1.5-64", 64, _paper(50.5, 68.9, 51.8, 75.1, 1470, 55.2), 86.9),
)


def command(row: Row, gpus: int, out: Path, port: int = 29501) -> list[str]:
    """The ``accelerate launch`` command line of one row."""
    schedule = str(DropSchedule.parse(row.schedule)).replace(",", ";") if ":" in row.schedule else row.schedule
    model_args = (f"pretrained={MODEL_ID},method={row.method},schedule={schedule},"
                  "dtype=float16,attn_implementation=sdpa,batch_size=1")
    return ["accelerate", "launch", "--num_processes", str(gpus), "--main_process_port", str(port),
            "-m", "lmms_eval", "--model", "v2drop", "--model_args", model_args,
            "--tasks", ",".join(b.task for b in BENCHMARKS), "--include_path", str(TASK_DIR),
            "--output_path", str(out / row.name), "--log_samples"]


def run(gpus: int, out: Path, dry_run: bool = False) -> None:
    for row in ROWS:
        cmd = command(row, gpus, out)
        print(shlex.join(cmd), flush=True)
        if not dry_run:
            subprocess.run(cmd, check=True)


def read_results(folder: Path) -> dict | None:
    """The newest ``*_results.json`` lmms-eval wrote under ``folder`` (None if there is none)."""
    files = sorted(glob.glob(str(folder / "**" / "*_results.json"), recursive=True))
    return json.loads(Path(files[-1]).read_text()) if files else None


def scores(results: dict) -> dict[str, float]:
    """Column -> score in the paper's units (percent; MME as perception + cognition)."""
    out = {}
    for bench in BENCHMARKS:
        task = results.get("results", {}).get(bench.task)
        if task is not None and all(k in task for k in bench.metrics):
            out[bench.column] = bench.scale * sum(float(task[k]) for k in bench.metrics)
    return out


def relative_average(row_scores: dict[str, float], base: dict[str, float]) -> float | None:
    """Mean over the columns of score ÷ unpruned score, in percent (the paper's "Avg")."""
    ratios = [row_scores[c] / base[c] for c in base if c in row_scores and base[c]]
    return 100.0 * sum(ratios) / len(ratios) if ratios and len(ratios) == len(BENCHMARKS) else None


def table(out: Path) -> str:
    """Markdown: one line per row, "ours (paper)" per benchmark, then the logged efficiency."""
    head = ["row", "tokens", *(b.column for b in BENCHMARKS), "Avg", "kept (logged)", "prefill ms", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    measured = {row.name: read_results(out / row.name) for row in ROWS}
    base = scores(measured["vanilla"]) if measured["vanilla"] else {}
    for row in ROWS:
        results = measured[row.name] or {}
        ours = scores(results) if results else {}
        cells = [_pair(ours.get(b.column), row.paper.get(b.column), b.column == "MME") for b in BENCHMARKS]
        average = relative_average(ours, base) if base else None
        throughput = results.get("throughput", {})
        lines.append("| " + " | ".join([
            row.name, str(row.tokens), *cells, _pair(average, row.paper_average, False, "%"),
            _num(throughput.get("avg_vision_tokens_kept"), "{:.1f}"),
            _num(throughput.get("avg_prefill_ms_per_sample"), "{:.1f}"),
            _num(throughput.get("avg_peak_memory_mb"), "{:.0f}")]) + " |")
    return "\n".join(lines)


def _pair(ours: float | None, paper: float | None, integer: bool, unit: str = "") -> str:
    fmt = "{:.0f}" if integer else "{:.1f}"
    left = "-" if ours is None else fmt.format(ours) + unit
    return left if paper is None else f"{left} ({fmt.format(paper)}{unit})"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("run", "collect"))
    ap.add_argument("--out", type=Path, default=Path("results/lmms/llava-1.5-7b"))
    ap.add_argument("--gpus", type=int, default=8, help="processes for accelerate launch (one per GPU)")
    ap.add_argument("--dry-run", action="store_true", help="run: print the commands only")
    args = ap.parse_args(argv)
    if args.action == "run":
        run(args.gpus, args.out, args.dry_run)
    else:
        print(table(args.out))


if __name__ == "__main__":
    main()
