"""What a run under ``v2drop.apply`` recorded: kept tokens, scores, timings and memory.

Everything here is plain Python (lists, dicts, floats) so that ``Trace.to_dict()`` goes
straight to JSON and the visualisation module needs no torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["SampleTrace", "Trace", "PatchLayout"]


@dataclass
class PatchLayout:
    """Where each vision token of a sample sits in its image(s) or video.

    ``cells[i] = (frame, row, col)`` for vision token ``i`` (its index in the sample's original
    vision-token sequence); ``frame`` counts images of a prompt, video frames, or crops of a
    multi-crop image. ``grids[f] = (rows, cols)`` is the token grid of frame ``f``, and
    ``kinds[f]`` says what frame ``f`` is ("image", "video", "base", "crop"). Tokens that are
    not patches (e.g. LLaVA-NeXT's row separators) have ``row = col = -1``.
    """

    cells: list[tuple[int, int, int]]
    grids: list[tuple[int, int]]
    kinds: list[str]


@dataclass
class SampleTrace:
    """One sample of the batch. Vision-token indices are ordinals into that sample's ORIGINAL
    vision-token sequence (0 .. num_vision_tokens - 1), whatever was dropped before."""

    num_vision_tokens: int
    vision_positions: list[int]                  # where the vision tokens sit in input_ids
    alive_per_layer: list[int] = field(default_factory=list)   # vision tokens entering each layer
    kept: dict[int, list[int]] = field(default_factory=dict)   # drop layer -> kept ordinals (sorted)
    scores: dict[int, dict[str, list]] = field(default_factory=dict)  # layer -> {"index": [...], "score": [...]}
    layout: PatchLayout | None = None

    def dropped_at(self, layer: int) -> list[int]:
        """Ordinals dropped at drop layer ``layer`` (alive before it, not kept by it)."""
        before = set(self.alive_before(layer))
        return sorted(before - set(self.kept[layer]))

    def alive_before(self, layer: int) -> list[int]:
        """Ordinals alive when layer ``layer`` starts, before its own drop."""
        alive = list(range(self.num_vision_tokens))
        for drop_layer in sorted(self.kept):
            if drop_layer >= layer:
                break
            alive = self.kept[drop_layer]
        return alive

    def alive_after(self, layer: int) -> list[int]:
        """Ordinals that layer ``layer`` actually processes (after its own drop, if any)."""
        return self.kept[layer] if layer in self.kept else self.alive_before(layer)


@dataclass
class Trace:
    """A record of the prefill (and decoding) of one ``generate``/forward sequence."""

    method: str
    schedule: str
    num_layers: int
    samples: list[SampleTrace] = field(default_factory=list)
    prefill_seconds: float = 0.0      # wall time of the prompt forward pass
    decode_seconds: float = 0.0       # wall time of all single-token forward passes
    scoring_seconds: float = 0.0      # time spent choosing tokens (inside prefill)
    tokens_generated: int = 0         # forward passes that produced a new token (prefill included)
    peak_memory_bytes: int | None = None
    memory_kind: str = ""             # "cuda_max_allocated" or "process_rss"
    kv_cache_bytes: int | None = None  # keys + values held after the last forward
    prompt_tokens: int = 0
    prefill_calls: int = 0            # >1 when generating without a KV cache
    seed: int | None = None           # the seed of a stochastic rule (``random``): the run's draw, to repeat it

    @property
    def decode_tokens_per_second(self) -> float | None:
        steps = self.tokens_generated - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for sample in data["samples"]:  # JSON object keys must be strings
            sample["kept"] = {str(k): v for k, v in sample["kept"].items()}
            sample["scores"] = {str(k): v for k, v in sample["scores"].items()}
        data["decode_tokens_per_second"] = self.decode_tokens_per_second
        return data

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trace":
        """The trace back from :meth:`to_dict` (or its JSON). Top-level keys that are not trace fields
        are annotations added by tools (e.g. the app's ``what_matters``) and are left out."""
        names = {f.name for f in fields(cls)}
        data = {key: value for key, value in data.items() if key in names}
        samples = []
        for s in data.pop("samples", []):
            s = dict(s)
            s["kept"] = {int(k): v for k, v in s["kept"].items()}
            s["scores"] = {int(k): v for k, v in s["scores"].items()}
            if s.get("layout") is not None:
                lay = s["layout"]
                s["layout"] = PatchLayout([tuple(c) for c in lay["cells"]], [tuple(g) for g in lay["grids"]],
                                          list(lay["kinds"]))
            samples.append(SampleTrace(**s))
        return cls(samples=samples, **data)
