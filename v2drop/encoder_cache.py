"""Run the vision tower once for two answers to the same image.

The app answers each question twice, unpruned and with V²Drop, and both prompts carry the same
pixels. V²Drop only changes the language model, so the vision tower's output is the same for
both; on a CPU the tower is a large share of the prefill (SigLIP-so400m on two 384-px tiles takes
about as long as LLaVA-OneVision-0.5B's language model on their 1,317 tokens).

:func:`shared_encoder_outputs` wraps the model's ``get_image_features`` / ``get_video_features``
(transformers 5.x: the inner model calls them in ``forward``) for the duration of a ``with``
block: a call whose arguments equal the previous call's (tensors compared element by element)
returns the previous output instead of running the tower again. Only the latest call per method
is kept, so memory stays bounded; the wrappers are removed on exit.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["shared_encoder_outputs", "ENCODER_METHODS"]

#: the inner model's methods that run the vision tower (transformers 5.24)
ENCODER_METHODS = ("get_image_features", "get_video_features")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class _Memo:
    """The latest ``(args, kwargs) -> output`` of one method. ``hits`` counts the reuses and
    ``saved_seconds`` the tower time they saved (the reused call's own time, per reuse), so that
    a caller can still charge each answer the full cost of its prefill."""

    def __init__(self, method: Any) -> None:
        self.method, self.key, self.output, self.seconds = method, None, None, 0.0
        self.hits, self.saved_seconds = 0, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.key is not None and _same(self.key[0], args) and self.key[1].keys() == kwargs.keys() \
                and all(_same(self.key[1][k], kwargs[k]) for k in kwargs):
            self.hits += 1
            self.saved_seconds += self.seconds
            return self.output
        start = time.perf_counter()
        self.key, self.output = (args, kwargs), self.method(*args, **kwargs)
        self.seconds = time.perf_counter() - start
        return self.output


@contextlib.contextmanager
def shared_encoder_outputs(model: nn.Module) -> Iterator[dict[str, _Memo]]:
    """Within the block, repeated vision-tower calls on equal inputs run the tower once.
    Yields ``{method name: memo}`` (``memo.hits`` counts the reuses)."""
    inner = getattr(model, "model", model)
    memos = {name: _Memo(getattr(inner, name)) for name in ENCODER_METHODS if callable(getattr(inner, name, None))}
    shadowed = {name: inner.__dict__[name] for name in memos if name in inner.__dict__}  # an enclosing block's
    for name, memo in memos.items():
        setattr(inner, name, memo)   # an instance attribute shadows the class's method
    try:
        yield memos
    finally:
        for name in memos:
            if name in shadowed:
                setattr(inner, name, shadowed[name])
            else:
                delattr(inner, name)
