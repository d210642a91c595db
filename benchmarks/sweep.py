"""The drop-layer sweep: at a fixed layer-averaged budget, move the first drop layer across the depth.

    python -m benchmarks.sweep                                   # the embedded model, 1,200 questions
    python -m benchmarks.sweep --model ckpt/run/model --n 600 --budgets 0.5 --first-layers 1,2,3

For every budget (layer-averaged share of the vision tokens kept), first drop layer L1 and
method, the Shapes model answers the held-out benchmark (``shapes.scenes.benchmark(n)``) through
``shapes.evaluate.evaluate``; each row reports its accuracy overall and per question type, the
same relative to the unpruned model (run once), and the object-patch recall at the first drop:
the share of the patches of the objects the question names (``shapes.truth.question_mask``) that
are still alive right after layer L1 dropped, averaged over the questions that name a present
object. The schedule of every row follows one rule, :func:`sweep_schedule`, for every model; a
position where the budget cannot be met is reported as unreachable and not run.

Output: ``--out`` (JSON: settings, the unpruned accuracy, one row per configuration, the command)
and optionally ``--figure`` (plotly HTML, ``visualize.charts.sweep_chart``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from v2drop.schedule import DropSchedule, drop_layers, first_layer_schedule  # the rule lives in the library: the app sweeps by it too
from v2drop.trace import SampleTrace, Trace

__all__ = ["drop_layers", "sweep_schedule", "SweepSchedule", "default_first_layers", "patch_indices",
           "RecallCollector", "run_sweep", "sweep_table", "pivot_table", "build_parser", "main"]

DEFAULT_METHODS = ("v2drop", "fastv-lite", "pdrop", "random", "uniform")
DEFAULT_BUDGETS = (0.5, 0.3333)
SINGLE_STAGE = ("fastv", "fastv-lite")  # FastV drops once


# ----------------------------------------------------------------------------- the schedule rule
@dataclass(frozen=True)
class SweepSchedule:
    """What one method runs at one (budget, first layer): ``schedule`` is ``None`` when the
    budget is out of reach at that position (``note`` says why)."""

    schedule: DropSchedule | None
    avg_kept_share: float | None  # the real layer-averaged share of the vision tokens
    note: str | None = None

    @property
    def reachable(self) -> bool:
        return self.schedule is not None


def sweep_schedule(method: str, first_layer: int, num_layers: int, budget: float,
                   num_vision_tokens: int) -> SweepSchedule:
    """The sweep's schedule rule, identical for every model.

    ``fastv`` / ``fastv-lite``: one stage at ``first_layer``. Every other method (``v2drop``,
    ``random``, ``uniform``, ``pdrop``, ...): stages at :func:`drop_layers`, each keeping the same
    share of the tokens still alive (``DropSchedule.for_budget``). For PDrop that shared ratio is
    its geometric pyramid (what ``benchmarks.bench.matched_schedule`` gives it through
    ``closest_to_budget`` when its layers reach the budget), so PDrop, V²Drop, random and uniform
    run the same schedule and differ only in the tokens they choose. The ratio is solved so that
    the layer-averaged kept share meets ``budget``; when even dropping everything at
    ``first_layer`` keeps more than the budget (``first_layer / num_layers > budget``) the
    position is unreachable: nothing is moved or clamped."""
    try:
        schedule = (DropSchedule.for_budget(num_layers, (first_layer,), budget, num_vision_tokens)
                    if method in SINGLE_STAGE else first_layer_schedule(first_layer, num_layers, budget,
                                                                        num_vision_tokens))
    except ValueError as err:
        return SweepSchedule(None, None, str(err))
    share = schedule.average_kept(num_layers, num_vision_tokens) / num_vision_tokens
    return SweepSchedule(schedule, share)


def default_first_layers(num_layers: int, budgets: Sequence[float]) -> list[int]:
    """Every first drop layer from 1 up to the last at which the largest budget is reachable
    (``L1 / D ≤ budget``); smaller budgets report the deeper positions as unreachable."""
    last = max(layer for layer in range(1, num_layers) if layer / num_layers <= max(budgets) + 1e-9)
    return list(range(1, last + 1))


# ----------------------------------------------------------------------------- object-patch recall
def patch_indices(sample: SampleTrace, ordinals: Sequence[int]) -> list[int]:
    """Row-major patch indices (into the first frame's grid) of vision-token ordinals, through the
    sample's layout; without a layout, ordinal = patch index. Non-patch tokens are left out."""
    layout = sample.layout
    if layout is None:
        return list(ordinals)
    cols = layout.grids[0][1]
    out = []
    for ordinal in ordinals:
        frame, row, col = layout.cells[ordinal]
        if frame == 0 and row >= 0:
            out.append(row * cols + col)
    return out


def recall_after(sample: SampleTrace, layer: int, mask: np.ndarray) -> float | None:
    """Share of the ``True`` patches of ``mask`` still alive right after ``layer`` dropped
    (``None`` when the mask is empty)."""
    total = int(mask.sum())
    if total == 0:
        return None
    alive = np.zeros(mask.shape[0], dtype=bool)
    alive[patch_indices(sample, sample.alive_after(layer))] = True
    return float((alive & mask).sum()) / total


class RecallCollector:
    """``on_trace`` callback for ``shapes.evaluate.evaluate``: the object-patch recall after
    ``layer`` of each question, in order (batches arrive in question order)."""

    def __init__(self, masks: Sequence[np.ndarray], qtypes: Sequence[str], layer: int) -> None:
        self.masks, self.qtypes, self.layer = masks, qtypes, layer
        self.values: list[float | None] = []

    def __call__(self, trace: Trace) -> None:
        for sample in trace.samples:
            self.values.append(recall_after(sample, self.layer, self.masks[len(self.values)]))

    def result(self) -> tuple[float | None, dict[str, float | None], dict[str, int]]:
        """``(mean recall, per type, questions counted per type)`` over questions with a mask."""
        if len(self.values) != len(self.masks):
            raise RuntimeError(f"traced {len(self.values)} samples for {len(self.masks)} questions")
        by_type: dict[str, list[float]] = {}
        for value, qtype in zip(self.values, self.qtypes):
            if value is not None:
                by_type.setdefault(qtype, []).append(value)
        counted = [v for v in self.values if v is not None]
        return (float(np.mean(counted)) if counted else None,
                {t: float(np.mean(v)) for t, v in sorted(by_type.items())},
                {t: len(v) for t, v in sorted(by_type.items())})


# ----------------------------------------------------------------------------- running
class Progress:
    """Elapsed time and ETA over a known number of configurations (ETA = mean time so far)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.time()

    def step(self, label: str) -> str:
        self.done += 1
        elapsed = time.time() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        return f"[{self.done}/{self.total}] {label} | elapsed {_clock(elapsed)}, ETA {_clock(eta)}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _relative(value: float, base: float) -> float | None:
    return value / base if base else None


def _row(budget: float, first_layer: int, method: str, plan: SweepSchedule, result: dict | None,
         recall: tuple | None, base: dict) -> dict:
    """One JSON row; accuracy fields are ``None`` for an unreachable position."""
    row = dict(budget=budget, first_layer=first_layer, method=method, reachable=plan.reachable,
               schedule=None if plan.schedule is None else str(plan.schedule), avg_kept_share=plan.avg_kept_share,
               note=plan.note, accuracy=None, per_type=None, relative=None, relative_per_type=None,
               recall_at_first_drop=None, recall_per_type=None, recall_n_per_type=None, seconds=None)
    if result is not None and recall is not None:
        if "random_draws" in result:  # how many random masks the accuracy averages
            row["random_draws"] = result["random_draws"]
        row.update(accuracy=result["accuracy"], per_type=result["per_type"], seconds=result["seconds"],
                   relative=_relative(result["accuracy"], base["accuracy"]),
                   relative_per_type={t: _relative(a, base["per_type"].get(t, 0.0))
                                      for t, a in result["per_type"].items()},
                   recall_at_first_drop=recall[0], recall_per_type=recall[1], recall_n_per_type=recall[2])
    return row


def run_sweep(model, processor, questions: Sequence, budgets: Sequence[float], first_layers: Sequence[int],
              methods: Sequence[str], batch_size: int = 32, max_new_tokens: int = 1,
              log: Callable[[str], None] = print, checkpoint: Callable[[dict], None] | None = None) -> dict:
    """The unpruned model once, then every (budget, first layer, method) on ``questions``
    (``shapes.scenes.Sample``s). Returns ``{"unpruned": ..., "rows": [...]}``; ``checkpoint``
    receives that dict after every configuration (so a long run leaves partial results)."""
    from shapes import evaluate as shapes_eval
    from shapes import truth

    num_layers = model.config.text_config.num_hidden_layers
    num_vision = model.config.image_seq_length
    masks = [truth.question_mask(q.question, q.objects) for q in questions]
    qtypes = [q.qtype for q in questions]
    plans = {(b, layer, m): sweep_schedule(m, layer, num_layers, b, num_vision)
             for b in budgets for layer in first_layers for m in methods}
    progress = Progress(1 + sum(p.reachable for p in plans.values()))
    base = shapes_eval.evaluate(model, processor, questions, batch_size=batch_size, max_new_tokens=max_new_tokens)
    sweep: dict = {"unpruned": {k: base[k] for k in ("accuracy", "per_type", "per_type_n", "seconds")}, "rows": []}
    log(progress.step(f"unpruned: {100 * base['accuracy']:.1f} % ({base['seconds']:.0f} s)"))
    for (budget, layer, method), plan in plans.items():
        result = recall = None
        if plan.reachable:
            collector = RecallCollector(masks, qtypes, layer)
            result = shapes_eval.evaluate(model, processor, questions, method=method, schedule=plan.schedule,
                                          batch_size=batch_size, max_new_tokens=max_new_tokens, on_trace=collector)
            recall = collector.result()
        row = _row(budget, layer, method, plan, result, recall, base)
        sweep["rows"].append(row)
        if plan.reachable:
            log(progress.step(f"budget {budget:g}, L1={layer}, {method} ({plan.schedule}): "
                              f"{_pct(row['accuracy'])} % = {_pct(row['relative'])} % of unpruned, "
                              f"recall {_pct(row['recall_at_first_drop'])} % ({row['seconds']:.0f} s)"))
        if checkpoint is not None:
            checkpoint(sweep)
    return sweep


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def sweep_table(sweep: dict) -> str:
    """Markdown: one line per row (unreachable rows included), relative accuracy per type in %."""
    qtypes = sorted(sweep["unpruned"]["per_type"])
    head = (["budget", "first drop layer", "method", "schedule", "avg kept %", "accuracy %", "relative %"]
            + [f"rel. {t} %" for t in qtypes] + ["object recall at first drop %"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sweep["rows"]:
        if not r["reachable"]:
            cells = [f"{r['budget']:g}", str(r["first_layer"]), r["method"], "unreachable"] + ["-"] * (len(head) - 4)
        else:
            cells = ([f"{r['budget']:g}", str(r["first_layer"]), r["method"], r["schedule"],
                      _pct(r["avg_kept_share"]), _pct(r["accuracy"]), _pct(r["relative"])]
                     + [_pct(r["relative_per_type"].get(t)) for t in qtypes] + [_pct(r["recall_at_first_drop"])])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pivot_table(sweep: dict) -> str:
    """Markdown, one line per (budget, first drop layer), one column per method:
    "relative accuracy % / object recall at first drop %" (the figure's two rows in one table)."""
    methods = list(dict.fromkeys(r["method"] for r in sweep["rows"]))
    cells: dict[tuple, dict[str, str]] = {}
    for r in sweep["rows"]:
        text = f"{_pct(r['relative'])} / {_pct(r['recall_at_first_drop'])}" if r["reachable"] else "unreachable"
        cells.setdefault((r["budget"], r["first_layer"]), {})[r["method"]] = text
    lines = ["| budget | first drop layer | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 2)]
    for (budget, layer), by_method in cells.items():
        lines.append(f"| {budget:g} | {layer} | " + " | ".join(by_method.get(m, "-") for m in methods) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` keeps the module docstring's layout and shows every default."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.sweep``."""
    from shapes import scenes

    ap = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__, formatter_class=_Formatter)
    ap.add_argument("--model", default="assets/shapes-llava", help="a saved Shapes-format LLaVA folder")
    ap.add_argument("--n", type=int, default=1200, help="held-out questions (shapes.scenes.benchmark(n))")
    ap.add_argument("--seed", type=int, default=scenes.BENCHMARK_SEED, help="benchmark seed")
    ap.add_argument("--budgets", type=_floats, default=",".join(map(str, DEFAULT_BUDGETS)),
                    help="comma list of layer-averaged kept shares of the vision tokens")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma list of v2drop method names")
    ap.add_argument("--first-layers", type=_ints, default=None,
                    help="comma list of first drop layers; None: every layer from 1 up to the last at which "
                         "the largest budget is reachable")
    ap.add_argument("--batch-size", type=int, default=32, help="questions per generate (left-padded)")
    ap.add_argument("--max-new-tokens", type=int, default=1,
                    help="the first generated token is the answer word (word-level tokenizer)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--device", default="cpu", help="torch device of the model")
    ap.add_argument("--out", default="results/sweep/sweep.json", help="JSON path (rewritten after every row)")
    ap.add_argument("--figure", default=None, help="plotly HTML path (optional)")
    return ap


def _weights_sha256(folder: str) -> str | None:
    """sha256 of the folder's ``model.safetensors``: which weights a result came from (models get retrained)."""
    path = Path(folder) / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _methods(text: str) -> list[str]:
    from v2drop import available_methods

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in available_methods()]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; available: {', '.join(available_methods())}")
    return methods


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep, write the JSON (and the figure), print the table; returns the JSON dict."""
    import torch

    from shapes import scenes
    from shapes.model import load_default

    args = build_parser().parse_args(argv)
    methods = _methods(args.methods)
    torch.set_num_threads(args.threads)
    model, processor = load_default(args.device, model_dir=args.model)
    num_layers = model.config.text_config.num_hidden_layers
    first_layers = args.first_layers or default_first_layers(num_layers, args.budgets)
    info = dict(model=args.model, weights_sha256=_weights_sha256(args.model), n=args.n, seed=args.seed, num_layers=num_layers,
                num_vision_tokens=model.config.image_seq_length, budgets=args.budgets, first_layers=first_layers,
                methods=methods, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                threads=args.threads, device=args.device, torch=torch.__version__,
                rule=" ".join((sweep_schedule.__doc__ or "").split()),
                command="python -m benchmarks.sweep " + " ".join(argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write = lambda sweep: out.write_text(json.dumps({**info, **sweep}, indent=1))  # noqa: E731
    print(f"{args.model}: {num_layers} layers, {args.n} questions, budgets {args.budgets}, "
          f"first layers {first_layers}, methods {methods}", flush=True)
    start = time.time()
    sweep = run_sweep(model, processor, scenes.benchmark(args.n, seed=args.seed), args.budgets, first_layers,
                      methods, args.batch_size, args.max_new_tokens, log=lambda m: print(m, flush=True),
                      checkpoint=write)
    result = {**info, **sweep, "seconds": round(time.time() - start, 1)}
    out.write_text(json.dumps(result, indent=1))
    if args.figure:
        from visualize.charts import sweep_chart

        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        sweep_chart(result).write_html(args.figure, include_plotlyjs="cdn")
    print(f"\nunpruned: {_pct(result['unpruned']['accuracy'])} %\n" + sweep_table(result), flush=True)
    print("\nrelative accuracy % / object recall at first drop %\n" + pivot_table(result), flush=True)
    print(f"wrote {out}" + (f" and {args.figure}" if args.figure else ""), flush=True)
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
