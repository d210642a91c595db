"""The reason, where the answer appears: one sentence, computed from this run's trace, that says
what happened to the tokens that matter (the ground truth's objects or the visitor's mark).

    "V²Drop dropped all 9 of the star's patches before layer 2, where they changed least
     (variation 21 vs 43 for the rest of the picture)."

:func:`what_happened` finds the first drop layer at which V²Drop lost any of those tokens, counts
what it lost there and by then, and compares their variation score at that layer (the trace's
``scores``: ‖h_l − h_(l−1)‖₂ of every alive vision token) with the other alive tokens'. Nothing is
written per example: every number comes from the trace. No Gradio and no model here.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Sequence

from v2drop.trace import SampleTrace

__all__ = ["Loss", "first_loss", "what_happened", "owner_of", "variation_line"]


@dataclass(frozen=True)
class Loss:
    """What the first drop that touched the tokens that matter did to them."""

    layer: int                  # the drop layer (the tokens are gone before it runs)
    lost: int                   # tokens that matter dropped there
    lost_by_then: int           # ... there and at every earlier drop
    total: int                  # tokens that matter
    variation: float | None     # their mean variation score at ``layer`` (those alive before it)
    others: float | None        # the other alive tokens' mean score at ``layer``


def _mean_scores(sample: SampleTrace, layer: int, tokens: set[int]) -> tuple[float | None, float | None]:
    """Mean score at ``layer`` of the alive ``tokens`` and of the other alive tokens."""
    record = sample.scores.get(layer)
    if not record:
        return None, None
    inside = [s for i, s in zip(record["index"], record["score"]) if i in tokens]
    outside = [s for i, s in zip(record["index"], record["score"]) if i not in tokens]
    return (float(mean(inside)) if inside else None), (float(mean(outside)) if outside else None)


def first_loss(sample: SampleTrace, tokens: Sequence[int]) -> Loss | None:
    """The first drop layer that dropped any of ``tokens`` (None when every one survives every drop)."""
    wanted = set(tokens)
    for layer in sorted(sample.kept):
        lost = wanted & set(sample.dropped_at(layer))
        if lost:
            alive = wanted & set(sample.alive_after(layer))
            inside, outside = _mean_scores(sample, layer, wanted)
            return Loss(layer, len(lost), len(wanted) - len(alive), len(wanted), inside, outside)
    return None


def owner_of(objects: Sequence[dict], source: str) -> str:
    """Whose patches: "the star's", "the 3 squares'", "the marked" (``objects``: the matters' dicts)."""
    if source != "truth" or not objects:
        return "the marked"
    shapes = {o["shape"] for o in objects}
    if len(objects) == 1:
        return f"the {objects[0]['shape']}'s"
    if len(shapes) == 1:
        return f"the {len(objects)} {objects[0]['shape']}s'"
    return f"the {len(objects)} objects'"


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"


def _variation(loss: Loss) -> str:
    if loss.variation is None or loss.others is None:
        return ""
    where = ", where they changed least" if loss.variation < loss.others else ""
    return f"{where} (variation {_number(loss.variation)} vs {_number(loss.others)} for the rest of the picture)"


def what_happened(sample: SampleTrace, tokens: Sequence[int], objects: Sequence[dict], source: str,
                  method: str = "V²Drop") -> str:
    """One sentence about the tokens that matter in this run; "" when there are none."""
    if not tokens:
        return ""
    whose = owner_of(objects, source)
    loss = first_loss(sample, tokens)
    if loss is None:
        alive = len(sample.alive_after(max(sample.kept))) if sample.kept else sample.num_vision_tokens
        return (f"{method} kept all {len(tokens)} of {whose} patches through every drop (it dropped "
                f"{sample.num_vision_tokens - alive} of the other {sample.num_vision_tokens - len(tokens)} tokens), "
                "so losing them is not what changed the answer.")
    count = (f"all {loss.total} of {whose} patches" if loss.lost_by_then == loss.total
             else f"{loss.lost_by_then} of {whose} {loss.total} patches")
    return f"{method} dropped {count} before layer {loss.layer}{_variation(loss)}."


def variation_line(sample: SampleTrace, tokens: Sequence[int], objects: Sequence[dict], source: str) -> str:
    """"At the first drop (layer 2), the star's patches changed 20 vs 42 for the rest of the picture.":
    the object-vs-background variation of this run, shown with every answer whose tokens are known."""
    if not tokens or not sample.kept:
        return ""
    first = min(sample.kept)
    inside, outside = _mean_scores(sample, first, set(tokens))
    if inside is None or outside is None:
        return ""
    return (f"At the first drop (layer {first}), {owner_of(objects, source)} patches changed {_number(inside)} vs "
            f"{_number(outside)} for the rest of the picture (variation ‖h_l − h_(l−1)‖₂; V²Drop keeps the "
            "highest).")
