"""The drop layer, one click away: the visitor's own question at the same layer-averaged budget,
with the first drop at every layer that can reach it, for V²Drop, random and uniform.

The schedule of each first layer follows the benchmark sweep's rule
(:func:`v2drop.schedule.first_layer_schedule`: three stages that cut the remaining depth in equal
parts, one shared keep ratio), so the app's sweep is the benchmark's, on one question. Each run is
one prefill and a short greedy answer (``max_new_tokens``); the vision tower runs once for all of
them (:func:`v2drop.encoder_cache.shared_encoder_outputs`). For each (first layer, method) the
result holds the answer, whether it is right (when the truth is known) and the share of the tokens
that matter (ground truth or the visitor's mark) still alive right after the first drop.

    sweep = run_layer_sweep(model, processor, image, "what color is the star ?", [], reference, 256,
                            tokens=[168, 169, ...], expected="orange", seed=1234)
    sweep.rows[0].answer, sweep.rows[0].right, sweep.rows[0].alive_share
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from studio.lesson import is_right
from studio.pair import _eos_ids, _media_inputs, _to_device
from v2drop.adapters import decoder_depth
from v2drop.encoder_cache import shared_encoder_outputs
from v2drop.engine import apply
from v2drop.schedule import DropSchedule, first_layer_schedule
from v2drop.trace import SampleTrace

__all__ = ["SWEEP_METHODS", "SweepRow", "LayerSweep", "run_layer_sweep", "sweep_markdown", "tie_sentence",
           "METHOD_LABELS"]

SWEEP_METHODS = ("v2drop", "random", "uniform")
METHOD_LABELS = {"v2drop": "V²Drop", "random": "random", "uniform": "uniform"}
ANSWER_TOKENS = 4   # the embedded model answers one word + end; hub models get a short start of an answer


@dataclass
class SweepRow:
    """One (first layer, method) of the sweep."""

    first_layer: int
    method: str
    schedule: str
    answer: str
    right: bool | None              # None: no truth known
    alive_share: float | None       # tokens that matter alive right after the first drop (None: none known)


@dataclass
class LayerSweep:
    """The whole sweep of one question."""

    question: str
    budget: float                    # layer-averaged kept share, the reference schedule's
    reference: str                   # the schedule it was matched to
    num_layers: int
    num_vision_tokens: int
    seed: int                        # random's seed (one draw per first layer)
    unpruned: str
    expected: str | None
    tokens: int                      # tokens that matter (0: none known)
    rows: list[SweepRow] = field(default_factory=list)
    unreachable: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, first_layer: int, method: str) -> SweepRow | None:
        return next((r for r in self.rows if r.first_layer == first_layer and r.method == method), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _greedy(model: torch.nn.Module, inputs: dict[str, Any], eos: set[int], max_new_tokens: int) -> list[int]:
    """Greedy token ids of one prompt (prefill, then one token at a time with a KV cache)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids: list[int] = []
    step = dict(inputs)
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            out = model(**step, cache=cache, use_cache=True, logits_to_keep=1)
            token = int(out.logits[0, -1].argmax())
            ids.append(token)
            if token in eos:
                break
            step = {"input_ids": torch.tensor([[token]], device=inputs["input_ids"].device)}
    return ids


def _alive_share(sample: SampleTrace, first_layer: int, tokens: Sequence[int]) -> float | None:
    if not tokens:
        return None
    alive = set(sample.alive_after(first_layer))
    return sum(t in alive for t in tokens) / len(tokens)


def run_layer_sweep(model: torch.nn.Module, processor: Any, image: Any, question: str,
                    history: Sequence[tuple[str, str]], reference: DropSchedule, num_vision_tokens: int, *,
                    tokens: Sequence[int] = (), expected: str | None = None, seed: int = 0,
                    methods: Sequence[str] = SWEEP_METHODS, max_new_tokens: int = ANSWER_TOKENS) -> LayerSweep:
    """Answer ``question`` unpruned and, for every first drop layer that reaches ``reference``'s
    layer-averaged budget on ``num_vision_tokens`` tokens, under each of ``methods``."""
    start = time.perf_counter()
    num_layers = decoder_depth(model)
    budget = reference.average_kept(num_layers, num_vision_tokens) / num_vision_tokens
    tokenizer = getattr(processor, "tokenizer", processor)
    eos = _eos_ids(model, processor)
    inputs = _to_device(_media_inputs(processor, history, question, image), model)

    def text(ids: list[int]) -> str:
        return tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=True).strip()

    def verdict(answer: str) -> bool | None:
        return None if expected is None else is_right(answer, expected)

    with shared_encoder_outputs(model):
        sweep = LayerSweep(question, budget, str(reference), num_layers, num_vision_tokens, seed,
                           text(_greedy(model, inputs, eos, max_new_tokens)), expected, len(tokens))
        for first in range(1, num_layers):
            try:
                schedule = first_layer_schedule(first, num_layers, budget, num_vision_tokens)
            except ValueError:
                sweep.unreachable.append(first)
                continue
            for method in methods:
                with apply(model, schedule, method, seed=seed) as session:
                    answer = text(_greedy(model, inputs, eos, max_new_tokens))
                sample = session.trace.samples[0]
                sweep.rows.append(SweepRow(first, method, str(schedule), answer, verdict(answer),
                                           _alive_share(sample, first, tokens)))
    sweep.seconds = time.perf_counter() - start
    return sweep


def _mark(right: bool | None) -> str:
    """" ✅" / " ❌" after an answer, "" when no truth is known."""
    return "" if right is None else (" ✅" if right else " ❌")


def _cell(row: SweepRow | None) -> str:
    """"no ❌ 0 %": the answer, its verdict, the share of the tokens that matter alive."""
    if row is None:
        return "–"
    mark = _mark(row.right)
    alive = "" if row.alive_share is None else f" {100 * row.alive_share:.0f} %"
    return f"{row.answer or '(empty)'}{mark}{alive}"


def sweep_markdown(sweep: LayerSweep, whose: str = "the objects'") -> str:
    """The sweep as a narrow Markdown table (it must fit a phone): one line per first layer, one
    column per method; the schedules follow the table."""
    methods = list(dict.fromkeys(r.method for r in sweep.rows))
    expected = f" Expected: **{sweep.expected}**." if sweep.expected else ""
    unpruned = sweep.unpruned + _mark(None if sweep.expected is None else is_right(sweep.unpruned, sweep.expected))
    alive = (f" Each cell: the answer, and the share of {whose} {sweep.tokens} patches still processed right "
             "after the first drop." if sweep.tokens
             else " Each cell: the answer. Mark what matters (or pick a gallery scene) to see how much of it survives.")
    lines = [f"**“{sweep.question}”** at {100 * sweep.budget:.0f} % of the vision tokens on layer average (the "
             f"budget of `{sweep.reference}`), first drop at every layer that can reach it. Unpruned: "
             f"**{unpruned}**.{expected} Random: one draw, seed {sweep.seed}.{alive}", "",
             "| first drop | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    firsts = sorted({r.first_layer for r in sweep.rows})
    for first in firsts:
        lines.append(f"| {first} | " + " | ".join(_cell(sweep.row(first, m)) for m in methods) + " |")
    schedules = ", ".join(f"{first}: `{sweep.row(first, methods[0]).schedule}`" for first in firsts)
    lines.append(f"\nSchedules (the benchmark sweep's rule, the same for every method): {schedules}.")
    if sweep.unreachable:
        lines.append(f"First drop at layer {', '.join(map(str, sweep.unreachable))}: the budget cannot be "
                     "reached (dropping everything there keeps more).")
    lines.append(f"{len(sweep.rows)} runs in {sweep.seconds:.1f} s.")
    return "\n".join(lines)


def _fate(share: float | None, thing: str) -> str:
    if share is None:
        return ""
    if share == 0:
        return f"{thing} lost"
    return f"{thing} kept" if share == 1 else f"{100 * share:.0f} % of {thing} kept"


def tie_sentence(sweep: LayerSweep, thing: str = "the objects") -> str:
    """"Your question at layer 1: the star kept, orange ✅; at layer 2: the star lost, no ❌; …"
    (V²Drop's rows): the benchmark sweep's finding, on this question."""
    parts = []
    for row in (r for r in sweep.rows if r.method == "v2drop"):
        fate = _fate(row.alive_share, thing)
        where = f"at layer {row.first_layer}: " + (f"{fate}, " if fate else "")
        parts.append(f"{where}“{row.answer}”{_mark(row.right)}")
    if not parts:
        return ""
    return f"Your question (“{sweep.question}”) with V²Drop, first drop " + "; ".join(parts) + "."
