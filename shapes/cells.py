"""The cell language: a scene written as 256 words, one per vision token, in raster order.

Real LLMs reach vision with retrieval heads that web-scale text grew for them: heads that find,
in a long prefix, the few tokens a question is about.  The Shapes language model is pretrained on
a few thousand documents, so ``shapes.pipeline --text-format cells`` gives its text corpus that
shape: every document starts with the scene as 256 cell words (the same 16x16 raster as the
vision tokens, top row first) and goes on with questions about it and their answers::

    bg bg red_circle bg ... red_circle_tl ... bg   how many circles are there ? one . ...

A cell word says what the patch shows, as the vision tower's own patch labels do
(``shapes.train.patch_labels``): ``bg`` for background, ``red_circle`` for a patch covered by a
red circle, and, on the patch that holds an object's centre, ``red_circle_tl``: the same with
the half of the picture it lies in (``t``/``b``, then ``l``/``r``).  Counting is counting the
centre words, and a position question reads the centre word's halves; a language model that
answers these documents has learned lookups over a 256-token prefix.  Alignment then teaches the
projector to turn each patch into what its cell word would have been.

That is the ``centres`` language.  The ``halves`` language (``--cell-words halves``) swaps where
the half is written: every object patch carries the half *it* lies in (``red_circle_tl``), and the
centre patch alone is the plain ``red_circle`` that counting counts.  A patch's half is then a
property of the patch itself, as the picture gives it (the vision tower is pretrained on every
patch's row and column), not of an object centre found elsewhere; and a position question reads
the half from all of an object's patches rather than from one among many that do not say it.
"""

from __future__ import annotations

import torch

from . import scenes
from .train import GRID, centre_patch, patch_labels

BACKGROUND = "bg"
HALVES = ("tl", "tr", "bl", "br")
NUM_CELLS = GRID * GRID  # 256, one per vision token
LANGUAGES = ("centres", "halves")  # where a cell word writes the half: on the centre / on every object patch


def _object_word(color: str, shape: str) -> str:
    return f"{color}_{shape}"


CELL_WORDS = tuple(
    [BACKGROUND]
    + [_object_word(c, s) for c in scenes.COLOR_NAMES for s in scenes.SHAPES]
    + [f"{_object_word(c, s)}_{h}" for c in scenes.COLOR_NAMES for s in scenes.SHAPES for h in HALVES]
)


def half_of(cell: int) -> str:
    """``tl``/``tr``/``bl``/``br``: the half, top or bottom then left or right, of a raster cell."""
    row, col = divmod(cell, GRID)
    return ("t" if row < GRID // 2 else "b") + ("l" if col < GRID // 2 else "r")


def cell_words(objects: list[scenes.Obj], language: str = "centres") -> list[str]:
    """The 256 cell words of a scene, in raster order (the vision tokens' order).

    ``centres``: covered patches ``red_circle``, the centre ``red_circle_<half of the centre>``;
    ``halves``: covered patches ``red_circle_<their own half>``, the centre ``red_circle``."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown cell language {language!r}; choose from {', '.join(LANGUAGES)}")
    shape_label, color_label, _ = patch_labels(objects)
    words = [BACKGROUND] * NUM_CELLS
    for cell in range(NUM_CELLS):
        if shape_label[cell]:
            word = _object_word(scenes.COLOR_NAMES[color_label[cell] - 1], scenes.SHAPES[shape_label[cell] - 1])
            words[cell] = f"{word}_{half_of(cell)}" if language == "halves" else word
    for o in objects:
        cell = centre_patch(o)
        word = _object_word(o.color, o.shape)
        words[cell] = word if language == "halves" else f"{word}_{half_of(cell)}"
    return words


def parts(word: str) -> list[str]:
    """The ordinary words a cell word joins: ``red_star_tl`` -> red, star, top, left; ``bg`` -> none."""
    if word == BACKGROUND:
        return []
    color, shape, *half = word.split("_")
    where = [{"t": "top", "b": "bottom"}[half[0][0]], {"l": "left", "r": "right"}[half[0][1]]] if half else []
    return [color, shape, *where]


@torch.no_grad()
def compose_embeddings(embedding: torch.nn.Embedding, tokenizer) -> None:
    """Start every cell word's embedding at the sum of its parts' embeddings, so that the question
    word ``star`` and the 35 cell words of stars share a direction from the first step (the usual
    way to initialise tokens added to a vocabulary: from the words they are made of)."""
    ids = tokenizer.convert_tokens_to_ids
    for word in CELL_WORDS:
        if parts(word):
            embedding.weight[ids(word)] = embedding.weight[ids(parts(word))].sum(0)


def kind_of(word: str, language: str = "centres") -> str:
    """``background``, ``covered`` (a patch of an object) or ``centre`` (an object's centre patch)."""
    if word == BACKGROUND:
        return "background"
    with_half = len(word.split("_")) == 3
    return "centre" if with_half == (language == "centres") else "covered"


@torch.no_grad()
def readout(patches: torch.Tensor, embedding: torch.nn.Embedding, tokenizer,
            objects: list[list[scenes.Obj]], language: str = "centres") -> dict[str, float]:
    """How close alignment brought each patch to its cell word: the share of patches whose nearest
    cell-word embedding (cosine) is their own cell word, per kind of patch, and the share of centre
    patches whose nearest word has the right colour and shape whatever its half.

    ``patches``: (batch, 256, hidden), the projector's output for the scenes in ``objects``;
    ``language``: the cell language the language model read (``LANGUAGES``)."""
    vocab = embedding.weight[tokenizer.convert_tokens_to_ids(list(CELL_WORDS))]          # (words, hidden)
    sims = torch.nn.functional.normalize(patches, dim=-1) @ torch.nn.functional.normalize(vocab, dim=-1).T
    hits: dict[str, list[bool]] = {"background": [], "covered": [], "centre": [], "centre colour and shape": []}
    for guesses, objs in zip(sims.argmax(-1).tolist(), objects):
        for truth, guess in zip(cell_words(objs, language), (CELL_WORDS[g] for g in guesses)):
            kind = kind_of(truth, language)
            hits[kind].append(guess == truth)
            if kind == "centre":
                hits["centre colour and shape"].append(guess.split("_")[:2] == truth.split("_")[:2])
    return {k: sum(v) / len(v) for k, v in hits.items() if v}
