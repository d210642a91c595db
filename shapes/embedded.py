"""The Shapes models the app ships, in one list: each one's folder under ``assets/``, its id in the
model picker and the words that say how it was trained. The first is the default.

Both are stock ``LlavaForConditionalGeneration`` folders of the same architecture
(``shapes.model``); they differ in how they were trained, and so in which of their vision tokens
are lazy at which layer (``python -m shapes.report``) and in where V²Drop does worse than random
dropping (``python -m benchmarks.sweep``). Each folder may hold those two files, ``report.json``
and ``sweep.json``, next to its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["EmbeddedModel", "EMBEDDED_MODELS", "ID_PREFIX", "ASSETS_DIR", "embedded_by_id"]

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
ID_PREFIX = "embedded: "
_WHAT_IT_KNOWS = ("tiny LLaVA, 8 layers, 256 vision tokens; understands generated shape scenes: colours, counts, "
                  "positions, existence of circles/squares/triangles/stars")


@dataclass(frozen=True)
class EmbeddedModel:
    """One shipped Shapes model: ``assets/<name>/``."""

    name: str      # the folder's name under assets/, e.g. "shapes-llava"
    trained: str   # how it was trained, in words (the picker and the model box say it)
    short: str     # the same in a few words, for the picker's list and the charts' panel titles

    @property
    def model_id(self) -> str:
        """Its id in the model picker and the page state, e.g. ``"embedded: shapes-llava"``."""
        return ID_PREFIX + self.name

    @property
    def folder(self) -> str:
        return str(ASSETS_DIR / self.name)

    @property
    def label(self) -> str:
        """The model box's title: how it was trained, then what it knows."""
        return f"Embedded Shapes model, {self.trained} — {_WHAT_IT_KNOWS}"


EMBEDDED_MODELS: tuple[EmbeddedModel, ...] = (
    EmbeddedModel("shapes-llava", "trained with training aids (attention and read-out losses)",
                  "trained with training aids"),
    EmbeddedModel("shapes-llava-standard",
                  "trained the standard way (vision tower alone, text-only LM, projector alignment, instruction "
                  "tuning; no training aids)", "trained the standard way"),
)


def embedded_by_id(model_id: str | None) -> EmbeddedModel | None:
    """The shipped model with this picker id, or None (a hub id, a folder, anything else)."""
    return next((m for m in EMBEDDED_MODELS if m.model_id == model_id), None)
