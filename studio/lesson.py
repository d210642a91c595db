"""Truth beside every answer: what the embedded model can be asked, what the right answer is for a
picture whose objects are known, and whether each side got it.

The embedded Shapes model was trained on four question templates (``shapes.scenes``):

    what color is the star ?                       -> a colour
    how many squares are there ?                   -> one .. four
    is the white star on the right or the left ?   -> left / right (top / bottom with "at the")
    is there a purple star ?                       -> yes / no

:func:`parse_question` recognises them (case and spacing aside); :func:`expected_answer` computes
the answer from a scene's objects by the generator's own rules, and prefers the answer stored
with the gallery example when the question is the example's own. :func:`model_note` is the plain
note shown before the answers when the embedded model is asked something it cannot answer.
No Gradio and no model here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from shapes import scenes

__all__ = ["Template", "parse_question", "expected_answer", "is_right", "model_note", "verdict_line", "EXAMPLES"]

_SHAPE = "(?P<shape>" + "|".join(scenes.SHAPES) + ")"
_SHAPES = "(?P<plural>" + "|".join(scenes.PLURAL.values()) + ")"
_COLOR = "(?P<color>" + "|".join(scenes.COLOR_NAMES) + ")"
_PATTERNS = {
    "color": re.compile(rf"what colou?r is the {_SHAPE}"),
    "count": re.compile(rf"how many {_SHAPES} are there"),
    "position": re.compile(rf"is the {_COLOR} {_SHAPE} (?P<prep>on|at) the (?P<a>\w+) or the (?P<b>\w+)"),
    "exist": re.compile(rf"is there an? {_COLOR} {_SHAPE}"),
}
_SIDES = {"on": {"left", "right"}, "at": {"top", "bottom"}}
#: one example per template, for the note
EXAMPLES = ("what color is the star ?", "how many squares are there ?",
            "is the white star on the right or the left ?", "is there a purple star ?")


@dataclass(frozen=True)
class Template:
    """A question in one of the embedded model's templates."""

    qtype: str                  # "color", "count", "position" or "exist"
    shape: str
    color: str | None = None    # position / exist
    sides: tuple[str, str] | None = None   # position: the two sides the question offers


def _normalise(question: str) -> str:
    return " ".join(question.lower().replace("?", " ").split())


def parse_question(question: str) -> Template | None:
    """The template ``question`` follows, or None (a free-form question)."""
    text = _normalise(question)
    for qtype, pattern in _PATTERNS.items():
        m = pattern.fullmatch(text)
        if m is None:
            continue
        groups = m.groupdict()
        shape = groups.get("shape") or next(s for s, p in scenes.PLURAL.items() if p == groups.get("plural"))
        sides = None
        if qtype == "position":
            sides = (groups["a"], groups["b"])
            if set(sides) != _SIDES[groups["prep"]]:
                return None
        return Template(qtype, shape, groups.get("color"), sides)
    return None


def _side(obj: scenes.Obj, sides: tuple[str, str]) -> str | None:
    """Which of ``sides`` the object is on, or None within the generator's margin of the midline."""
    lo = scenes.IMAGE_SIZE / 2 - scenes.MIDLINE_MARGIN
    hi = scenes.IMAGE_SIZE / 2 + scenes.MIDLINE_MARGIN
    value, near, far = (obj.x, "left", "right") if "left" in sides else (obj.y, "top", "bottom")
    return near if value <= lo else far if value >= hi else None


def expected_answer(question: str, objects: Sequence[scenes.Obj], stored: dict | None = None) -> str | None:
    """The right answer to ``question`` about a scene of ``objects``; None when the question is no
    template or has no single right answer (a colour of two stars, an object on the midline).
    ``stored``: the gallery record (``{"question", "answer"}``) whose answer wins for its own question."""
    if stored and _normalise(stored.get("question", "")) == _normalise(question) and stored.get("answer"):
        return str(stored["answer"])
    template = parse_question(question)
    if template is None:
        return None
    same_shape = [o for o in objects if o.shape == template.shape]
    if template.qtype == "color":
        return same_shape[0].color if len(same_shape) == 1 else None
    if template.qtype == "count":
        return scenes.COUNT_WORDS[len(same_shape)] if len(same_shape) < len(scenes.COUNT_WORDS) else None
    named = [o for o in same_shape if o.color == template.color]
    if template.qtype == "exist":
        return "yes" if named else "no"
    return _side(named[0], template.sides) if len(named) == 1 else None


_DIGITS = {str(i): word for i, word in enumerate(scenes.COUNT_WORDS)}


def _answer_words(expected: str) -> set[str]:
    """The words that answer a question of ``expected``'s kind (all colours, all counts, ...)."""
    groups = [set(scenes.COLOR_NAMES), set(scenes.COUNT_WORDS), {"left", "right", "top", "bottom"}, {"yes", "no"}]
    return next((g for g in groups if expected.lower() in g), {expected.lower()})


def is_right(answer: str, expected: str) -> bool:
    """Whether ``answer`` gives ``expected``: its first word that answers this kind of question
    (any colour for a colour question; a digit counts as its word) is ``expected``. For the
    embedded model's one-word answers this is the benchmark's first-word rule; a hub model's
    "The star is orange." is right too, and "No, it is red." wrong."""
    candidates = _answer_words(expected)
    for word in re.findall(r"[a-z]+|\d+", (answer or "").lower()):
        word = _DIGITS.get(word, word)
        if word in candidates:
            return word == expected.lower()
    return False


def model_note(question: str, has_truth: bool) -> str:
    """For the embedded model: what it cannot answer here, with examples; "" when it can."""
    examples = " · ".join(f"“{q}”" for q in EXAMPLES)
    if not has_truth and parse_question(question) is None:
        return ("The embedded model only knows generated shape scenes and four question templates; this picture "
                f"is not a gallery scene and the question is not a template, so its answers mean nothing. Try a "
                f"gallery scene with {examples}.")
    if not has_truth:
        return ("The embedded model was trained on generated shape scenes only; this picture is not one of the "
                "gallery's, so no answer is known and both answers may be guesses. Pick a gallery scene to see "
                "right and wrong.")
    if parse_question(question) is None:
        return ("The embedded model only answers four question templates, e.g. " + examples + ". This question "
                "is not one of them, so both answers mean nothing.")
    return ""


def verdict_line(answer: str, expected: str | None) -> str:
    """"✅ right" / "❌ wrong (expected orange)" / "" when nothing is known."""
    if expected is None:
        return ""
    return "✅ right" if is_right(answer, expected) else f"❌ wrong (expected {expected})"
