"""What matters for a question, and how much of it each method keeps: the tokens the what-matters
chart follows (the ground truth of a gallery scene, or the visitor's mark), the page's note about
them, the chart's data (kept in the session's :class:`~studio.state.PageState`) and the record
that goes into the downloadable trace. No Gradio and no model here: the handlers decide when.

A hand mark wins over the ground truth (the visitor asked for it); clearing the mark brings the
ground truth back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from studio.ground_truth import Scene, question_tokens
from v2drop.trace import SampleTrace
from visualize import charts
from visualize.overlay import MARK_MIN_SHARE, sample_layout, tokens_in_mask

__all__ = ["BASELINES", "baseline_label", "Matters", "find_matters", "matters_state", "chart_of", "trace_record",
           "NO_RUN_NOTE"]

# the baselines a visitor may add to the chart (run at V²Drop's layer-averaged budget)
BASELINES = ("none", "fastv-lite", "pdrop", "random", "uniform")
_LABELS = {"fastv-lite": "FastV-lite", "pdrop": "PDrop", "random": "random", "uniform": "uniform"}
RULE = f"a vision token counts when at least {100 * MARK_MIN_SHARE:.0f} % of its patch is covered"
NO_RUN_NOTE = "Ask a question: the chart then shows how much of it each layer keeps."


def baseline_label(method: str) -> str:
    return _LABELS.get(method, method)


@dataclass
class Matters:
    """The vision tokens that matter for the last run, where they come from, and what to say."""

    source: str                          # "truth" (a gallery scene's objects) or "marked" (the visitor's)
    tokens: list[int]
    note: str
    objects: list[dict] = field(default_factory=list)   # truth: the objects the question names


def _describe(objects: Sequence[Any]) -> str:
    """"the orange star"; "2 objects: the red square and the blue square"."""
    names = [f"the {o.color} {o.shape}" for o in objects]
    return names[0] if len(names) == 1 else f"{len(names)} objects: {', '.join(names[:-1])} and {names[-1]}"


def find_matters(scene: Scene | None, mark: np.ndarray | None, question: str, sample: SampleTrace,
                 region: Sequence[float], image_size: tuple[int, int]) -> Matters | None:
    """The tokens that matter for ``question`` in a run (``sample``) on a picture of ``image_size``
    whose grids cover ``region``: the visitor's ``mark`` if any, else the ``scene``'s ground truth,
    else None."""
    layout = sample_layout(sample)
    total = sample.num_vision_tokens
    if mark is not None:
        tokens = tokens_in_mask(layout, mark, region, image_size)
        note = (f"**Hand-marked:** {len(tokens)} of {total} vision tokens ({RULE}; "
                f"{100 * float(np.mean(mark)):.0f} % of the picture painted).")
        if not tokens:
            note = f"The mark covers no vision token enough ({RULE}): paint a larger area."
        return Matters("marked", tokens, note)
    if scene is None:
        return None
    found = question_tokens(scene, question, layout, region, image_size)
    objects = [asdict(o) for o in found.objects]
    if not found.objects:
        return Matters("truth", [], "This gallery picture's objects are known, but the question names none of them "
                       "(or none of that colour): ask about a shape in it, or mark what matters by hand.", objects)
    how = "the Shapes model's own patch grid" if found.exact else \
        "the objects' outlines mapped onto this model's patch layout"
    return Matters("truth", found.tokens, f"**Ground truth** (a generated scene): the question names "
                   f"{_describe(found.objects)}: {len(found.tokens)} of {total} vision tokens ({how}; {RULE}).",
                   objects)


def matters_state(matters: Matters, num_layers: int, runs: dict[str, SampleTrace | None],
                  drop_layers: Sequence[int], baseline: dict | None = None) -> dict:
    """The chart's data for the session's state: plain lists and numbers only."""
    series = charts.matters_series(runs, matters.tokens, num_layers)
    return {"source": matters.source, "tokens": list(matters.tokens), "note": matters.note,
            "objects": matters.objects, "drop_layers": list(drop_layers), "baseline": baseline,
            "series": [asdict(s) for s in series]}


def chart_of(data: dict | None):
    """The what-matters figure from the state's data, or None when there is nothing to follow."""
    if not data or not data.get("tokens"):
        return None
    series = [charts.MattersSeries(**s) for s in data["series"]]
    return charts.matters_chart(series, data["source"], data.get("drop_layers", ()))


def trace_record(data: dict | None, question: str) -> dict | None:
    """What the downloadable trace carries under ``what_matters``: the tokens, their source, the
    question, the named objects (ground truth), the rule, and the baseline's kept tokens if run."""
    if not data:
        return None
    return {"source": "ground truth" if data["source"] == "truth" else "hand-marked", "tokens": data["tokens"],
            "question": question, "objects": data.get("objects", []), "rule": RULE, "baseline": data.get("baseline"),
            "alive_per_layer": {s["name"]: s["alive"] for s in data["series"]}}
