"""Accuracy of the Shapes model on the held-out benchmark, unpruned and with token dropping.

    python -m shapes.evaluate [--model DIR] [--n 1200] [--methods none,v2drop]
                                     [--budgets 0.5,0.333,0.111] [--out results.json]

For every method other than ``none`` (the unpatched model) and every budget, a
``DropSchedule.for_budget(num_layers, layers, target=budget)`` is built and the model
is run inside ``v2drop.apply(model, schedule, method=name)``; any method name the
engine knows (``v2drop``, later ``fastv``, ``random``, ...) can be listed.
Explicit schedules can be given with ``--schedules "2:0.5,4:0.5,6:0;3:0.3"``.

Scoring: greedy ``model.generate(max_new_tokens=3)``; a question is correct when the
first generated word equals the one-word answer.  Batched with left padding (every
prompt has the same 256 image tokens).  The importable core is
``evaluate(model, processor, questions, method="none", schedule=None, batch_size=32)``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from v2drop.schedule import DropSchedule
from . import scenes

DEFAULT_BUDGETS = (0.5, 1 / 3, 1 / 9)
DEFAULT_LAYERS = (2, 4, 6)


def _fields(q):
    if isinstance(q, dict):
        return q["image"], q["question"], q["answer"], q.get("qtype", "all")
    return q.image, q.question, q.answer, q.qtype


def build_inputs(processor, images, questions):
    """Left-padded batch of single-turn prompts (image first, then the question)."""
    texts = []
    for q in questions:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        texts.append(processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    tok = processor.tokenizer
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        return processor(images=list(images), text=texts, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = old


def first_word(text: str) -> str:
    parts = text.strip().lower().split()
    return parts[0] if parts else ""


@torch.no_grad()
def answer(model, processor, images, questions, max_new_tokens=3):
    """Greedy answers (decoded strings) for a batch of (image, question)."""
    inputs = build_inputs(processor, images, questions).to(model.device)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=processor.tokenizer.pad_token_id)
    new = out[:, inputs["input_ids"].shape[1]:]
    return processor.tokenizer.batch_decode(new, skip_special_tokens=True)


@torch.no_grad()
def object_variation(model, processor, samples, layers=(1, 2, 4, 6), batch_size: int = 32) -> list[dict]:
    """Are the object patches V²Drop's *active* or *lazy* tokens on this model?

    Unpruned forward passes over ``samples`` (``Sample``s).  For each layer l in ``layers``
    (``None``: every layer from 1 up), V²Drop's score of a vision token is ``‖h_in(l) − h_in(l−1)‖₂``.
    Returns one row per layer: the mean score over object patches (the ground truth of
    ``shapes.truth.objects_mask``) and over the other patches, and the share of object patches
    that rank in the top half of their image (the half a keep-half step at that layer keeps)."""
    from .truth import objects_mask

    if layers is None:
        layers = tuple(range(1, model.config.text_config.num_hidden_layers))
    scores, objects = {layer: [] for layer in layers}, []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i: i + batch_size]
        inputs = build_inputs(processor, [s.image for s in chunk], [s.question for s in chunk]).to(model.device)
        hidden = model(**inputs, output_hidden_states=True).hidden_states  # (layers + 1) x (batch, seq, dim)
        vision = inputs["input_ids"] == model.config.image_token_id  # (batch, seq)
        for layer in layers:
            score = (hidden[layer] - hidden[layer - 1]).norm(dim=-1)[vision].view(len(chunk), -1)  # (batch, 256)
            scores[layer].append(score)
        objects += [torch.from_numpy(objects_mask(s.objects)) for s in chunk]
    on_object = torch.stack(objects).to(model.device)  # (n, 256)
    rows = []
    for layer in layers:
        score = torch.cat(scores[layer])
        top_half = score >= score.median(dim=1, keepdim=True).values
        rows.append({"layer": layer, "object": score[on_object].mean().item(),
                     "background": score[~on_object].mean().item(),
                     "object_in_top_half": top_half[on_object].float().mean().item()})
    return rows


def _trace_kept(trace):
    """Best-effort mean number of kept vision tokens from an engine trace (if it exposes one)."""
    for name in ("average_kept", "avg_kept", "mean_kept"):
        v = getattr(trace, name, None)
        if v is None:
            continue
        try:
            return float(v() if callable(v) else v)
        except Exception:  # noqa: BLE001 - trace API is optional here
            return None
    return None


def evaluate(model, processor, questions, method="none", schedule=None, batch_size=32,
             max_new_tokens=3, return_predictions=False, on_trace=None) -> dict:
    """Exact-match accuracy (first answer word), overall and per question type.

    ``questions``: ``scenes.Sample`` objects or dicts with image/question/answer/qtype.
    ``method="none"`` runs the unpatched model; otherwise the model is patched with
    ``v2drop.apply(model, schedule, method=method)`` for each batch.
    ``on_trace``: optional callback given each batch's ``v2drop.Trace`` (e.g. kept positions).
    A stochastic rule (``random``) is seeded with each batch's first question index, so every
    question gets its own draw and the accuracy averages ``n`` draws (``random_draws``).
    """
    correct, total, preds, kept = {}, {}, [], []
    t0 = time.time()
    model.eval()
    for i in range(0, len(questions), batch_size):
        chunk = [_fields(q) for q in questions[i: i + batch_size]]
        imgs, qs = [c[0] for c in chunk], [c[1] for c in chunk]
        if method in (None, "none"):
            outs = answer(model, processor, imgs, qs, max_new_tokens)
        else:
            from v2drop import apply  # the engine; imported lazily

            with apply(model, schedule, method=method, seed=i) as run:  # random: a fresh draw per question
                outs = answer(model, processor, imgs, qs, max_new_tokens)
            if on_trace is not None:
                on_trace(run.trace)
            k = _trace_kept(getattr(run, "trace", None))
            if k is not None:
                kept.append(k)
        for (_, q, a, t), o in zip(chunk, outs):
            ok = first_word(o) == a.lower()
            correct[t] = correct.get(t, 0) + int(ok)
            total[t] = total.get(t, 0) + 1
            if return_predictions:
                preds.append({"question": q, "answer": a, "qtype": t, "prediction": o, "correct": ok})
    elapsed = time.time() - t0
    res = {
        "method": method or "none",
        "n": sum(total.values()),
        "accuracy": sum(correct.values()) / max(1, sum(total.values())),
        "per_type": {t: correct[t] / total[t] for t in sorted(total)},
        "per_type_n": {t: total[t] for t in sorted(total)},
        "seconds": round(elapsed, 2),
        "seconds_per_question": round(elapsed / max(1, sum(total.values())), 4),
    }
    if method == "random":
        res["random_draws"] = res["n"]  # one draw per question (seeded per batch, a row per question)
    if kept:
        res["trace_avg_kept"] = sum(kept) / len(kept)
    if return_predictions:
        res["predictions"] = preds
    return res


def format_table(rows, qtypes=scenes.QTYPES) -> str:
    head = ["method", "budget", "schedule", "avg kept", "overall"] + list(qtypes)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        b = r.get("budget")
        k = r.get("avg_kept")
        cells = [r["method"], "-" if b is None else f"{b:.3f}", r.get("schedule") or "-", "256" if k is None else f"{k:.1f}",
                 f"{100 * r['accuracy']:.1f}"]
        cells += [f"{100 * r['per_type'][t]:.1f}" if t in r["per_type"] else "-" for t in qtypes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m shapes.evaluate``."""
    ap = argparse.ArgumentParser(description="Evaluate the Shapes model (unpruned and with V²Drop).")
    ap.add_argument("--model", default=None, help="model folder (default: assets/shapes-llava)")
    ap.add_argument("--n", type=int, default=1200, help="number of benchmark questions")
    ap.add_argument("--seed", type=int, default=scenes.BENCHMARK_SEED)
    ap.add_argument("--methods", default="none,v2drop", help="comma list; 'none' = unpatched")
    ap.add_argument("--budgets", default="0.5,0.3333,0.1111",
                    help="target layer-averaged kept share of vision tokens")
    ap.add_argument("--layers", default="2,4,6", help="drop layers for DropSchedule.for_budget")
    ap.add_argument("--schedules", default=None, help="explicit schedules 'L:r,L:r;L:r' (instead of budgets)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("SHAPES_THREADS", "2")))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variation", type=int, default=16,
                    help="also report V2Drop's variation score on object vs background patches over the "
                         "first N benchmark images (0: skip)")
    ap.add_argument("--out", default=None, help="write results JSON here")
    return ap


def schedules_to_run(args: argparse.Namespace, num_layers: int) -> list[tuple[float | None, DropSchedule, str | None]]:
    """``[(budget, schedule, note)]``: the explicit ``--schedules``, or one schedule per ``--budgets``
    entry on ``--layers`` (``DropSchedule.closest_to_budget``; the note says when it was clamped)."""
    if args.schedules:
        return [(None, DropSchedule.parse(text), None) for text in args.schedules.split(";")]
    layers = tuple(int(x) for x in args.layers.split(","))
    return [(float(b), *DropSchedule.closest_to_budget(num_layers, layers, float(b))) for b in args.budgets.split(",")]


def evaluate_methods(model, processor, questions, methods: list[str], specs: list, batch_size: int,
                     num_layers: int, num_vision_tokens: int) -> list[dict]:
    """One result row per method and schedule ('none' once, unpruned), printed as it finishes."""
    rows = []
    for method in methods:
        runs = [(None, None, None)] if method == "none" else specs
        for budget, sched, note in runs:
            if note:
                print(f"note: {note}", flush=True)
            if method == "none":
                r = evaluate(model, processor, questions, batch_size=batch_size)
                r.update(budget=None, schedule=None, avg_kept=float(num_vision_tokens))
            else:
                r = evaluate(model, processor, questions, method=method, schedule=sched, batch_size=batch_size)
                r.update(budget=budget, schedule=str(sched), note=note,
                         avg_kept=float(sched.average_kept(num_layers=num_layers, num_vision_tokens=num_vision_tokens)))
            rows.append(r)
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def print_variation(variation: list[dict], n: int) -> None:
    """The object-vs-background variation table of :func:`object_variation`."""
    print(f"\nV2Drop variation score (L2 change of a vision token's hidden state), first {n} images:")
    print("| drop layer | object patches | background patches | object patches in the top half |")
    print("|---|---|---|---|")
    for v in variation:
        print(f"| {v['layer']} | {v['object']:.1f} | {v['background']:.1f} | {100 * v['object_in_top_half']:.0f} % |")


def main(argv=None):
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)

    from .model import NUM_VISION_TOKENS, load_default

    model, processor = load_default(args.device, model_dir=args.model)
    num_layers = model.config.text_config.num_hidden_layers
    questions = scenes.benchmark(args.n, seed=args.seed)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = evaluate_methods(model, processor, questions, methods, schedules_to_run(args, num_layers),
                            args.batch_size, num_layers, NUM_VISION_TOKENS)
    print()
    print(format_table(rows))
    variation = []
    if args.variation > 0:
        variation = object_variation(model, processor, questions[: args.variation])
        print_variation(variation, args.variation)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"model": args.model or "assets/shapes-llava", "n": args.n, "seed": args.seed,
                       "rows": rows, "variation": variation}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
