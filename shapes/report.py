"""One model's report card: ``python -m shapes.report --model DIR --out report.json``.

What issue 19 compares across the embedded models, measured on data no model trained on:

* the held-out benchmark (``scenes.benchmark``): unpruned accuracy per question type;
* the held-out drawn set (``drawn.benchmark``): the same, per background, aspect ratio and
  anti-aliasing: pictures drawn the way visitors draw them;
* answer form: every answer must be exactly one word followed by the end token; the report
  counts and lists the answers that are not (e.g. "red red");
* per decoder layer, V²Drop's variation score of object patches against background patches
  (``evaluate.object_variation`` with the ground-truth masks of ``shapes.truth``).

The drop-layer sweep is a separate command (``python -m benchmarks.sweep``).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import torch

from . import drawn, scenes
from .evaluate import build_inputs, object_variation


@torch.no_grad()
def answer_tokens(model, processor, samples: list[scenes.Sample], batch_size: int = 32) -> list[list[int]]:
    """Greedy answer token ids per sample (up to 3 new tokens, stopping at the end token)."""
    eos, pad = model.generation_config.eos_token_id, processor.tokenizer.pad_token_id
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i: i + batch_size]
        inputs = build_inputs(processor, [s.image for s in chunk], [s.question for s in chunk]).to(model.device)
        new = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=pad)
        for row in new[:, inputs["input_ids"].shape[1]:].tolist():
            tokens = []
            for t in row:
                tokens.append(t)
                if t == eos:
                    break
            out.append(tokens)
    return out


def answer_words(tokenizer) -> set[int]:
    """The ids of every vocabulary word an answer may be (no special tokens)."""
    return {i for w, i in tokenizer.get_vocab().items() if w not in tokenizer.all_special_tokens}


def is_one_word(tokens: list[int], eos: int, words: set[int]) -> bool:
    """Exactly one vocabulary word, then the end token."""
    return len(tokens) == 2 and tokens[0] in words and tokens[1] == eos


def score(model, processor, samples: list[scenes.Sample], groups: list[dict] | None = None,
          batch_size: int = 32) -> dict:
    """Accuracy overall, per type and per value of every key in ``groups`` (one dict per sample),
    and the answers that are not one word + end token."""
    tokens = answer_tokens(model, processor, samples, batch_size)
    tok = processor.tokenizer
    eos = model.generation_config.eos_token_id
    words = answer_words(tok)
    hits: dict[str, list[int]] = defaultdict(list)
    bad = []
    for k, (s, answer) in enumerate(zip(samples, tokens)):
        text = tok.decode(answer, skip_special_tokens=True).strip()
        ok = int(text.split()[:1] == [s.answer])
        keys = ["all", f"type={s.qtype}"] + [f"{g}={v}" for g, v in (groups[k] if groups else {}).items()]
        for key in keys:
            hits[key].append(ok)
        if not is_one_word(answer, eos, words):
            bad.append({"index": k, "question": s.question, "answer": text, "size": list(s.image.size)})
    return {"n": len(samples), "accuracy": {k: sum(v) / len(v) for k, v in sorted(hits.items())},
            "not_one_word": len(bad), "not_one_word_examples": bad[:10]}


def report(model, processor, n: int = 1200, n_drawn: int = 600, n_variation: int = 64) -> dict:
    """The report card of a loaded model (see the module docstring)."""
    benchmark = scenes.benchmark(n)
    held_out = drawn.benchmark(n_drawn)
    return {
        "benchmark": score(model, processor, benchmark),
        "drawn": score(model, processor, held_out, [drawn.condition_of(i) for i in range(n_drawn)]),
        "variation": object_variation(model, processor, benchmark[:n_variation], layers=None),
    }


def format_report(card: dict) -> str:
    """Markdown tables of a report card."""
    lines = []
    for name in ("benchmark", "drawn"):
        part = card[name]
        lines.append(f"\n{name} ({part['n']} questions; answers not one word + end: {part['not_one_word']})")
        lines.append("| group | accuracy |\n|---|---|")
        lines += [f"| {k} | {100 * v:.1f} |" for k, v in part["accuracy"].items()]
    lines.append("\n| layer | object patches | background patches | object patches in the top half |\n|---|---|---|---|")
    lines += [f"| {v['layer']} | {v['object']:.1f} | {v['background']:.1f} | {100 * v['object_in_top_half']:.0f} % |"
              for v in card["variation"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: assets/shapes-llava)")
    ap.add_argument("--n", type=int, default=1200, help="held-out benchmark questions")
    ap.add_argument("--drawn", type=int, default=600, help="held-out drawn questions (120 per background)")
    ap.add_argument("--variation", type=int, default=64, help="benchmark images for the variation table")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("SHAPES_THREADS", "2")))
    ap.add_argument("--out", default=None, help="write the report card here (JSON)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .model import load_default

    model, processor = load_default(model_dir=args.model)
    card = {"model": args.model or "assets/shapes-llava", **report(model, processor, args.n, args.drawn, args.variation)}
    print(format_report(card))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(card, f, indent=1)
    return card


if __name__ == "__main__":
    main()
