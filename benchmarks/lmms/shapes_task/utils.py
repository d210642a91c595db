"""Prompts and scoring of the ``shapes_heldout`` lmms-eval task (loaded by lmms-eval from the YAML).

Scoring is ``shapes.evaluate.first_word`` compared with the one-word answer, exactly as
``python -m shapes.evaluate`` scores, so both report the same accuracy on the same questions.
Run lmms-eval from the repository root so that ``shapes`` is importable.
"""

from __future__ import annotations

from PIL import Image

from shapes.evaluate import first_word


def doc_to_visual(doc: dict) -> list[Image.Image]:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question alone: the model's chat template places the image before it."""
    return doc["question"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """1.0 or 0.0, under ``accuracy`` and under the question type's own metric (``count_accuracy``, ...)."""
    correct = float(first_word(results[0]) == doc["answer"].lower())
    return {"accuracy": correct, f"{doc['qtype']}_accuracy": correct}
