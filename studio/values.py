"""The checks a handler makes on its arguments before using them: through the API any JSON value can
arrive where the page would send a string, a slider's number or a click's coordinates (a dict for a
model id, NaN for a layer, ``None`` for a button label, a wrong-shaped click index). Text is capped
before it is parsed, stored or echoed; numbers are finite and in range, or refused.

Functions that take a visitor's text raise :class:`~studio.inputs.ChatInputError` (a message for the
page); those that read a number or a position answer ``None`` for anything unusable, and the handler
then leaves the page as it was.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from studio.inputs import ChatInputError

__all__ = ["text_value", "whole_number", "point", "QuietSlider", "MAX_SCHEDULE_CHARS", "MAX_ID_CHARS", "MAX_PICK_CHARS"]

MAX_SCHEDULE_CHARS = 200   # a schedule of a dozen stages fits in 100
MAX_ID_CHARS = 200         # hub ids are at most 96 + 1 + 96
MAX_PICK_CHARS = 200       # a dropdown's value (preset, baseline, example name)


def text_value(value: Any, limit: int, what: str) -> str:
    """``value`` as text (``None`` is empty), at most ``limit`` characters; :class:`ChatInputError`
    for a non-text value or a longer text (whose length, not content, the message gives)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ChatInputError(f"The {what} must be text.")
    if len(value) > limit:
        raise ChatInputError(f"The {what} is {len(value):,} characters long; the limit is {limit}.")
    return value


def whole_number(value: Any, low: int, high: int) -> int | None:
    """``value`` (a number, or a string of one) rounded down to an int in ``low .. high``; ``None``
    for anything else (NaN, infinite, out of range, not a number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and len(value) <= 32:
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    number = math.floor(value)
    return number if low <= number <= high else None


def point(index: Any) -> tuple[float, float] | None:
    """A click's ``(x, y)`` from Gradio's select index (``[x, y]``), or ``None`` if it is no such pair
    of finite numbers."""
    if not isinstance(index, (list, tuple)) or len(index) < 2:
        return None
    x, y = index[0], index[1]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y)):
        return None
    return float(x), float(y)


class QuietSlider(gr.Slider):
    """``gr.Slider`` whose refusal of a value out of its range is a message for the page only (Gradio's
    own prints a traceback to the log for each such request, which anyone can send)."""

    def get_block_name(self) -> str:
        return "slider"  # the same front end as gr.Slider

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except gr.Error as err:
            raise gr.Error(err.message, print_exception=False) from None
