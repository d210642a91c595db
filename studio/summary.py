"""The run's summary beside the answers: the expected answer and each side's right/wrong, the
schedule and method each answer came from, the reason when V²Drop's answer differs or is wrong
(:func:`studio.reason.what_happened`), and the note about what the embedded model can answer
(:func:`studio.lesson.model_note`). Plain text and Markdown only; the handlers decide when.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from studio.lesson import is_right, verdict_line
from studio.reason import variation_line, what_happened
from v2drop.trace import SampleTrace

__all__ = ["TurnSummary", "summarise_turn", "turn_tags"]


@dataclass(frozen=True)
class TurnSummary:
    """What the page shows about one finished turn."""

    full_tag: str          # under the unpruned answer in its chat pane
    drop_tag: str          # under the V²Drop answer
    markdown: str          # the summary line(s) under the panes
    reason: str            # the one-sentence reason ("" when none was needed or none is known)
    objects: str = ""      # for "This run": the reason, else the objects' variation at the first drop


def turn_tags(full: str, drop: str, expected: str | None, schedule: str, method: str = "V²Drop") -> tuple[str, str]:
    """The small lines under each answer: its verdict (when the truth is known) and what produced it."""
    full_verdict, drop_verdict = verdict_line(full, expected), verdict_line(drop, expected)
    full_tag = " · ".join(x for x in (full_verdict, "unpruned (no drop)") if x)
    drop_tag = " · ".join(x for x in (drop_verdict, f"{method} at `{schedule}`") if x)
    return full_tag, drop_tag


def summarise_turn(full: str, drop: str, expected: str | None, schedule: str, sample: SampleTrace | None,
                   matters: dict | None, note: str = "", seed: int | None = None) -> TurnSummary:
    """The summary of a turn whose answers are ``full`` (unpruned) and ``drop`` (V²Drop at
    ``schedule``); ``matters``: the what-matters data of the run (tokens, source, objects)."""
    full_tag, drop_tag = turn_tags(full, drop, expected, schedule)
    lines = []
    if note:
        lines.append(f"⚠️ {note}")
    if expected is not None:
        verdicts = ["✅ right" if is_right(answer, expected) else "❌ wrong" for answer in (full, drop)]
        lines.append(f"🎯 Expected answer: **{expected}**. Unpruned: {verdicts[0]} · V²Drop: {verdicts[1]}.")
    differs = _words(full) != _words(drop)
    wrong = expected is not None and not is_right(drop, expected)
    reason = ""
    if (differs or wrong) and sample is not None:
        if matters and matters.get("tokens"):
            reason = what_happened(sample, matters["tokens"], matters.get("objects", []), matters.get("source", ""))
        else:
            reason = ("V²Drop's answer differs, and the app does not know which patches matter here: mark them "
                      "(the *What matters* tab) to see whether it dropped them.")
        lines.append(f"💡 Why: {reason}")
    line = ""
    if matters and matters.get("tokens") and sample is not None:
        line = variation_line(sample, matters["tokens"], matters.get("objects", []), matters.get("source", ""))
        if line:
            lines.append(f"📈 {line}")
    seed_text = f"; the random baseline's seed for this run: {seed}." if seed is not None else "."
    lines.append(f"V²Drop ran `{schedule}`" + seed_text)
    return TurnSummary(full_tag, drop_tag, "\n\n".join(lines), reason,
                       " ".join(x for x in (reason if matters and matters.get("tokens") else "", line) if x))


def _words(text: str) -> list[str]:
    """The answer's words, case and punctuation aside ("Orange." and "orange" are one answer)."""
    return re.findall(r"[a-z0-9]+", (text or "").lower())
