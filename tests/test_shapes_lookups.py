"""``shapes.lookups``: what a cell-document language model's answers name and where it looks."""

import numpy as np
import torch

from shapes import cells, lookups, scenes
from shapes.model import NUM_VISION_TOKENS
from shapes.pipeline import Pipeline, build_parser


def _pipe() -> Pipeline:
    return Pipeline(build_parser().parse_args(["--text-format", "cells"]), torch.device("cpu"))


def _colour_samples(n: int = 4) -> list[scenes.Sample]:
    return [scenes.sample(lookups.LOOKUP_SEED, i, qtype="color") for i in range(n)]


def test_asked_cells_are_the_cells_of_the_named_object_only():
    s = _colour_samples(1)[0]
    words = cells.cell_words(s.objects)
    shape = s.question.split()[-2]
    asked = lookups.asked_cells(s, words)
    assert asked.any()
    assert all(words[i].split("_")[:2] == [s.answer, shape] for i in np.flatnonzero(asked))
    assert not any(w != cells.BACKGROUND and w.split("_")[1] == shape for w, a in zip(words, asked) if not a)


def test_attention_all_on_the_asked_cells_counts_as_asked():
    samples = _colour_samples()
    maps = torch.zeros(2, len(samples), 3, NUM_VISION_TOKENS)  # (layers, batch, heads, cells)
    for b, s in enumerate(samples):
        asked = torch.from_numpy(lookups.asked_cells(s, cells.cell_words(s.objects)))
        maps[:, b, 1, asked] = 1.0 / asked.sum()      # head 1 looks at the asked object
        maps[:, b, 0, ~asked] = 1.0 / (~asked).sum()  # head 0 everywhere else
    shares = lookups.answer_attention(samples, maps, "centres")
    assert np.allclose(shares[:, 1], [1.0, 0.0, 0.0])
    assert np.isclose(shares[0, 0, 0], 0.0) and np.isclose(shares[0, 0, 1:].sum(), 1.0)
    assert [head for head, *_ in lookups.best_lookup_heads(shares)] == [1, 1]


def test_answer_errors_tell_a_wrong_object_from_an_absent_colour():
    pipe, samples = _pipe(), _colour_samples(3)
    ids = pipe.processor.tokenizer.convert_tokens_to_ids
    absent = next(c for c in scenes.COLOR_NAMES if c not in {o.color for o in samples[1].objects})
    other = next(o.color for o in samples[2].objects if o.color != samples[2].answer)
    logits = torch.zeros(3, len(pipe.processor.tokenizer))
    for row, word in enumerate([samples[0].answer, absent, other]):
        logits[row, ids(word)] = 1.0
    assert lookups.answer_errors(pipe, samples, logits) == {
        "right": 1, "a colour no object has": 1, "another object's colour": 1}


def test_answer_attention_reads_every_layer_and_restores_the_attention_kernel():
    pipe, samples = _pipe(), _colour_samples(2)
    before = pipe.model.model.language_model.config._attn_implementation
    logits, maps = lookups.answer_logits_and_attention(pipe, samples)
    config = pipe.model.config.text_config
    assert logits.shape == (2, config.vocab_size)
    assert maps.shape == (config.num_hidden_layers, 2, config.num_attention_heads, NUM_VISION_TOKENS)
    assert torch.all(maps.sum(-1) <= 1.0 + 1e-5)
    assert pipe.model.model.language_model.config._attn_implementation == before
