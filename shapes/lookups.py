"""Where a cell-document language model looks when it answers: ``python -m shapes.lookups``.

Issue 28's text stage (``shapes.pipeline --text-format cells``) teaches the language model to
answer questions about a scene written as 256 cell words.  It learns whether a named object is
there and how many there are, but not which colour the one named object has.  Two measurements
say why, on held-out single-question cell documents of a saved stage:

* ``answer_errors``: what each wrong colour answer names: another object's colour in the scene
  (the lookup found objects but not the asked one), a colour no object has, or no colour at all;
* ``answer_attention``: for every decoder layer and head, the attention that the position which
  predicts the answer gives to the asked objects' cells, to the other objects' cells and to the
  background cells.  A lookup head, as the shipped model's training aids build them, puts most of
  its attention on the asked objects; ``best_lookup_heads`` lists each layer's best one.

    python -m shapes.lookups --stage docs/bench/cells/text-stage-2900.pt
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

from . import cells, scenes, truth
from .pipeline import Pipeline, build_parser, pad
from .train import VAL_SEED

LOOKUP_SEED = VAL_SEED + 7  # held out: no training stream uses it
SHARES = ("asked", "other objects", "background")


def asked_cells(sample: scenes.Sample, words: list[str]) -> np.ndarray:
    """(256,) bool: the cells whose word names one of the objects the question is about."""
    pairs = {(o.color, o.shape) for o in truth.question_objects(sample.question, sample.objects)}
    return np.array([w != cells.BACKGROUND and tuple(w.split("_")[:2]) in pairs for w in words])


def answer_logits_and_attention(pipe, samples: list[scenes.Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits at the position that predicts each sample's answer, (batch, vocab), and every
    layer's attention from there over the 256 cells, (layers, batch, heads, 256)."""
    rows = [pipe.query_row(pipe.cell_ids(s), s.question) for s in samples]
    ids, attention = pad(rows, pipe.encoder.pad)
    lm = pipe.model.model.language_model
    before = lm.config._attn_implementation
    lm.set_attn_implementation("eager")  # SDPA returns no attention weights
    pipe.model.eval()
    try:
        with torch.no_grad():
            out = lm(input_ids=ids.to(pipe.device), attention_mask=attention.to(pipe.device), output_attentions=True)
    finally:
        lm.set_attn_implementation(before)
    last = (attention.sum(1) - 1).to(pipe.device)
    rows_ = torch.arange(len(rows), device=pipe.device)
    logits = pipe.model.lm_head(out.last_hidden_state[rows_, last])
    first = 1 + (1 if pipe.chats else 0)  # <s> (and <|user|>) come before the cells
    maps = torch.stack([a[rows_, :, last, first: first + cells.NUM_CELLS] for a in out.attentions])
    return logits, maps


def answer_errors(pipe, samples: list[scenes.Sample], logits: torch.Tensor) -> collections.Counter:
    """For questions with a colour answer: right, another object's colour, a colour no object has,
    or not a colour."""
    guesses = pipe.processor.tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
    kinds: collections.Counter = collections.Counter()
    for s, guess in zip(samples, guesses):
        if guess == s.answer:
            kinds["right"] += 1
        elif guess in {o.color for o in s.objects}:
            kinds["another object's colour"] += 1
        else:
            kinds["a colour no object has" if guess in scenes.COLOR_NAMES else "not a colour"] += 1
    return kinds


def answer_attention(samples: list[scenes.Sample], maps: torch.Tensor, language: str) -> np.ndarray:
    """(layers, heads, 3): mean attention from the answer position on the asked objects' cells, the
    other objects' cells and the background cells (``SHARES``), over the samples that ask about an
    object that is there."""
    totals, counted = np.zeros((maps.shape[0], maps.shape[2], len(SHARES))), 0
    for b, s in enumerate(samples):
        words = cells.cell_words(s.objects, language)
        asked = asked_cells(s, words)
        if not asked.any():
            continue  # "is there a blue square ?" when there is none: nothing to look up
        background = np.array([w == cells.BACKGROUND for w in words])
        for i, where in enumerate((asked, ~asked & ~background, background)):
            totals[:, :, i] += maps[:, b][:, :, torch.from_numpy(where)].sum(-1).cpu().numpy()
        counted += 1
    return totals / max(counted, 1)


def best_lookup_heads(shares: np.ndarray) -> list[tuple[int, float, float, float]]:
    """Per layer: (head, asked, other objects, background) of the head that looks most at the asked cells."""
    best = shares[:, :, 0].argmax(1)
    return [(int(h), *map(float, shares[layer, h])) for layer, h in enumerate(best)]


def report(pipe, n: int) -> str:
    """The error kinds on ``n`` colour questions and, per question type, each layer's best lookup head."""
    lines = []
    for qtype in scenes.QTYPES:
        samples = [scenes.sample(LOOKUP_SEED, i, qtype=qtype) for i in range(n)]
        logits, maps = answer_logits_and_attention(pipe, samples)
        if qtype == "color":
            errors = answer_errors(pipe, samples, logits)
            lines.insert(0, f"colour answers on {n} held-out cell documents: "
                         + ", ".join(f"{k} {100 * v / n:.1f} %" for k, v in errors.most_common()))
        lines.append(f"{qtype}: per layer, the head that looks most at the asked objects' cells "
                     "(attention on asked / other objects / background cells)")
        shares = answer_attention(samples, maps, pipe.args.cell_words)
        for layer, (head, asked, other, background) in enumerate(best_lookup_heads(shares)):
            lines.append(f"  layer {layer} head {head}: {asked:.2f} / {other:.2f} / {background:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", required=True, help="a saved stage of shapes.pipeline --text-format cells (text.pt ...)")
    ap.add_argument("--cell-words", choices=cells.LANGUAGES, default="centres", help="the language it read")
    ap.add_argument("--n", type=int, default=128, help="held-out questions per type")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = Pipeline(build_parser().parse_args(["--text-format", "cells", "--cell-words", args.cell_words]),
                    torch.device("cpu"))
    pipe.model.load_state_dict(torch.load(args.stage, map_location="cpu")["model"])
    print(report(pipe, args.n))


if __name__ == "__main__":
    main()
