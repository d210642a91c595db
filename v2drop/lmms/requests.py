"""lmms-eval requests as model calls: batching, generation settings, stop strings, schedules.

Pure Python (no torch, no lmms-eval): requests are only read through ``.args`` and
``.metadata``, the two fields of lmms-eval's ``Instance`` that a "simple" model receives.
For a ``generate_until`` request ``args`` is ``(context, generation_kwargs, doc_to_visual,
doc_id, task, split)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..schedule import DropSchedule

__all__ = ["Batch", "batches", "generation_kwargs", "truncate", "parse_schedule"]

DEFAULT_MAX_NEW_TOKENS = 128  # the paper's loader default


@dataclass
class Batch:
    """Requests that run in one ``generate`` call, with their positions in the request list."""

    indices: list[int]
    requests: list[Any]

    @property
    def real(self) -> list[bool]:
        """False for the padding requests lmms-eval adds so that every process runs as many."""
        return [not r.metadata.get("__padding_only__", False) for r in self.requests]

    def singles(self) -> list["Batch"]:
        return [Batch([i], [r]) for i, r in zip(self.indices, self.requests)]


def batches(requests: Sequence[Any], size: int) -> list[Batch]:
    """Consecutive requests, in order, at most ``size`` per batch. A batch never mixes tasks,
    splits or generation settings. Keeping the order means that a run at batch size B batches exactly as
    ``shapes.evaluate`` does at batch size B, so both see the same padding."""
    out: list[Batch] = []
    key = None
    for index, request in enumerate(requests):
        new_key = _batch_key(request)
        if out and new_key == key and len(out[-1].requests) < size:
            out[-1].indices.append(index)
            out[-1].requests.append(request)
        else:
            out.append(Batch([index], [request]))
        key = new_key
    return out


def _batch_key(request: Any) -> tuple:
    """What the requests of one batch share: task, split and generation settings."""
    gen_kwargs, task, split = request.args[1], request.args[4], request.args[5]
    return task, split, repr(sorted((gen_kwargs or {}).items(), key=lambda kv: kv[0]))


def generation_kwargs(settings: dict | None, pad_token_id: int | None) -> tuple[dict, list[str]]:
    """``(kwargs for model.generate, stop strings)`` from a task's ``generation_kwargs``.

    Greedy unless ``temperature > 0`` (lmms-eval's convention); keys that only other models
    understand (e.g. ``image_aspect_ratio``) are ignored."""
    settings = dict(settings or {})
    until = settings.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(settings.get("temperature") or 0.0)
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(settings.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
        "num_beams": int(settings.get("num_beams") or 1),
        "do_sample": temperature > 0,
        "pad_token_id": pad_token_id,
    }
    if temperature > 0:
        kwargs["temperature"] = temperature
        if settings.get("top_p") is not None:
            kwargs["top_p"] = float(settings["top_p"])
    return kwargs, [u for u in until if u]


def truncate(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first stop string, as lmms-eval's own models cut their answers."""
    cut = min((text.find(u) for u in until if u in text), default=len(text))
    return text[:cut]


def parse_schedule(text: str) -> DropSchedule:
    """A preset name or stages. lmms-eval splits model args on commas, so stages may be
    separated by ``;`` (``3:0.5;17:0.3;22:0``) or the whole value quoted or bracketed."""
    body = text.strip().strip("\"'[]").strip()
    if body in DropSchedule.preset_names():
        return DropSchedule.preset(body)
    return DropSchedule.parse(body.replace(";", ","))
