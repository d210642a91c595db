"""Teaching text: the V²Drop rule, what a schedule means, and the story of one run (markdown)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from v2drop.trace import PatchLayout, SampleTrace, Trace

__all__ = ["RULE", "SCHEDULE_MEANING", "WHEN_LAZY_MATTERS", "how_it_works", "sweep_story", "schedule_text", "run_story", "describe_place"]

RULE = (
    "**The rule.** Inside the language model, every decoder layer adds an update to each token's hidden "
    "state. V²Drop measures, for every vision token, how much the previous layer changed it: the *variation* "
    "‖h<sub>l</sub> − h<sub>l−1</sub>‖₂. Tokens that barely change carry little new information for the "
    "question, so at a few chosen *drop layers* the least-varying vision tokens are removed from the "
    "sequence; the most-varying ones are kept, in their original order and with their original positions. "
    "Every later layer, and the KV cache it writes, works on the shorter sequence, which is where the time and "
    "memory saving comes from. Text tokens are never dropped, and no attention weights are needed, so it works "
    "with FlashAttention and SDPA."
)

SCHEDULE_MEANING = (
    "**The schedule** is a list of `layer:keep_ratio` stages, e.g. `2:0.6,4:0.5,6:0.3`. Before decoder layer "
    "*layer* (0-based) runs, `floor(alive × keep_ratio)` of the vision tokens **still alive** are kept, so the "
    "ratios compound: 256 → 153 → 76 → 22. A ratio of 0 drops every remaining vision token. Layer 0 cannot "
    "drop (there is no previous layer to compare with). *Average tokens kept* is the layer-averaged number of "
    "vision tokens (what papers call \"retained tokens\"); the FLOPs saving is the predicted share of "
    "prefill compute saved in the language model."
)

WHEN_LAZY_MATTERS = (
    "**When lazy tokens matter.** The rule assumes that a token the layers leave alone is one the question does "
    "not need. That is an observation about large models (LLaVA-1.5 in the paper), not a law. Whether it holds "
    "depends on the layer: in some layers of a model the tokens that show the asked-about object are the ones "
    "that change least, and a drop there removes them first. Mark what matters (or pick a gallery scene, whose "
    "objects are known) and watch the chart in *What matters*; the sweep below shows, for the embedded model, "
    "how much the first drop layer decides."
)


def sweep_story(sweep: Mapping[str, Any], method: str = "v2drop") -> str:
    """What the drop-layer sweep (``python -m benchmarks.sweep``'s JSON) says, in numbers: for each
    budget and first drop layer, the share of the unpruned accuracy ``method`` keeps and the share of the
    question's object patches alive after its first drop, next to the best other method there."""
    unpruned = sweep["unpruned"]["accuracy"]
    lines = [f"**The drop-layer sweep** ({sweep['n']} held-out questions; the unpruned model scores "
             f"{100 * unpruned:.1f} %). Each point moves the first drop layer and keeps the layer-averaged "
             "budget fixed; every method uses the same rule (`benchmarks/sweep.py`)."]
    for budget in dict.fromkeys(r["budget"] for r in sweep["rows"]):
        rows = [r for r in sweep["rows"] if r["budget"] == budget and r["reachable"]]
        parts = []
        for layer in sorted({r["first_layer"] for r in rows}):
            here = {r["method"]: r for r in rows if r["first_layer"] == layer}
            if method not in here:
                continue
            best = max((r for m, r in here.items() if m != method), key=lambda r: r["relative"], default=None)
            text = (f"layer {layer}: {100 * here[method]['relative']:.0f} % of the accuracy, "
                    f"{100 * here[method]['recall_at_first_drop']:.0f} % of the object patches kept")
            if best is not None:
                text += f" (best other: {best['method']} {100 * best['relative']:.0f} %)"
            parts.append(text)
        lines.append(f"- **Budget {100 * budget:.0f} %**, first drop at " + "; ".join(parts) + ".")
    lines.append("Where V²Drop's recall collapses, the object patches are that layer's lazy tokens: the rule "
                 "removes exactly what the question needs. Where its recall is high, variation finds the objects "
                 "better than chance (random and uniform keep about the budget's share).")
    return "\n".join(lines)


def how_it_works() -> str:
    return RULE + "\n\n" + SCHEDULE_MEANING + "\n\n" + WHEN_LAZY_MATTERS


def schedule_text(summary: Mapping[str, Any] | None, error: str | None = None) -> str:
    """One line for the schedule editor: the budget, or why the schedule is impossible."""
    if error:
        return f"⚠️ **This schedule cannot run:** {error}"
    if not summary:
        return ""
    n, avg = summary["num_vision_tokens"], summary["average_kept"]
    alive = summary["alive_per_layer"]
    path = " → ".join(str(a) for i, a in enumerate(alive) if i == 0 or a != alive[i - 1])
    return (f"**Average vision tokens kept:** {avg:.1f} of {n} ({avg / n * 100:.0f} %) · "
            f"**predicted prefill FLOPs saving:** {summary['flops_saving'] * 100:.0f} % · "
            f"tokens alive: {path} over {summary['num_layers']} layers")


def describe_place(layout: PatchLayout | None, ordinals: list[int]) -> str:
    """Where a set of patches sits, in words ("top left", "centre", ...), from their mean cell."""
    if layout is None or not ordinals:
        return "somewhere in the image"
    ys, xs, kinds = [], [], set()
    for i in ordinals:
        frame, row, col = layout.cells[i]
        if row < 0:
            continue
        rows, cols = layout.grids[frame]
        ys.append((row + 0.5) / rows)
        xs.append((col + 0.5) / cols)
        kinds.add(layout.kinds[frame])
    if not ys:
        return "on the row-separator tokens"
    y, x = float(np.mean(ys)), float(np.mean(xs))
    vertical = "top" if y < 0.36 else "bottom" if y > 0.64 else ""
    horizontal = "left" if x < 0.36 else "right" if x > 0.64 else ""
    place = " ".join(p for p in (vertical, horizontal) if p) or "centre"
    spread = float(np.std(ys) + np.std(xs))
    if spread < 0.35:
        return f"clustered in the {place}"
    return "spread over the whole image" if place == "centre" else f"spread out, weighted towards the {place}"


def run_story(trace: Trace, sample: int = 0, top: int = 10) -> str:
    """This run in words: tokens alive per layer, what each drop layer removed, where the most and
    least varying patches are."""
    if not trace.samples:
        return "No run yet."
    s: SampleTrace = trace.samples[sample]
    n = s.num_vision_tokens
    if n == 0:
        return "This prompt had no vision tokens, so nothing was dropped."
    lines = [f"**This run** (schedule `{trace.schedule}`, {trace.num_layers} layers, {n} vision tokens):", ""]
    alive = s.alive_per_layer
    lines.append("- Vision tokens entering each layer: " + ", ".join(f"L{i}: {a}" for i, a in enumerate(alive)))
    avg = sum(alive) / len(alive) if alive else n
    lines.append(f"- Layer average: **{avg:.1f}** of {n} vision tokens ({avg / n * 100:.0f} %).")
    for layer in sorted(s.kept):
        before = len(s.alive_before(layer))
        gone = s.dropped_at(layer)
        kept = s.kept[layer]
        lines.append(f"- Before layer **{layer}**: {before} alive, kept {len(kept)}, dropped {len(gone)} "
                     f"(mostly {describe_place(s.layout, gone)}); the survivors are "
                     f"{describe_place(s.layout, kept)}.")
    layers = sorted(k for k in s.scores if s.scores[k]["index"])
    if layers:
        total = np.zeros(n)
        count = np.zeros(n)
        for layer in layers:
            idx = np.asarray(s.scores[layer]["index"], dtype=int)
            val = np.asarray(s.scores[layer]["score"], dtype=float)
            if val.size and np.ptp(val) > 0:
                val = (val - val.min()) / np.ptp(val)
            total[idx] += val
            count[idx] += 1
        seen = np.nonzero(count)[0]
        mean = total[seen] / count[seen]
        order = seen[np.argsort(mean)]
        k = max(1, min(top, len(order) // 4 or 1))
        lines.append(f"- The **most varying** patches (averaged over layers {layers[0]}–{layers[-1]}) are "
                     f"{describe_place(s.layout, order[-k:].tolist())}; the **least varying** are "
                     f"{describe_place(s.layout, order[:k].tolist())}.")
    if trace.prefill_seconds:
        lines.append(f"- V²Drop prefill took {trace.prefill_seconds * 1e3:.0f} ms, of which choosing tokens took "
                     f"{trace.scoring_seconds * 1e3:.1f} ms.")
    return "\n".join(lines)
