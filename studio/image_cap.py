"""What the page says next to the image: the operator's image cap and how many vision tokens the
current model makes of this image under it (the prefill's cost grows with that count)."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from studio.inputs import build_inputs
from v2drop.adapters import get_adapter

__all__ = ["vision_token_count", "image_caption"]


def vision_token_count(model: torch.nn.Module, processor: Any, image: Image.Image) -> int:
    """Vision tokens in a one-question prompt about ``image`` (the processor alone; no model run)."""
    ids = build_inputs(processor, [], "?", image)["input_ids"][0]
    return int(torch.isin(ids, torch.tensor(get_adapter(model).vision_token_ids())).sum())


def image_caption(entry: Any, image: Image.Image) -> str:
    """``"Image: 1,317 vision tokens (image cap: …)"`` for a loaded model ``entry``
    (:class:`studio.registry.LoadedModel`)."""
    count = vision_token_count(entry.model, entry.processor, image)
    cap = f" (image cap: {entry.image_cap})" if entry.image_cap else ""
    return f"Image: {count:,} vision tokens for {entry.label}{cap}"
