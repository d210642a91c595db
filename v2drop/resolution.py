"""Image-resolution caps: fewer vision tokens per image, for hosts without a GPU.

At full resolution LLaVA-OneVision turns a 640×480 photo into 2,929 vision tokens (a base tile plus
four 384-px crops) and Qwen2-VL allows up to 16,384; on a 2-vCPU host one prefill then takes close
to a minute. The ``"base"`` cap keeps each family's own processing and changes one setting, chosen
by the family's adapter (:meth:`v2drop.adapters.ModelAdapter.base_resolution`):

* LLaVA-1.5: nothing (one 336-px crop, 576 tokens, already);
* LLaVA-NeXT / OneVision: one high-resolution tile (the base tile's size) as the only anyres
  canvas, in the image processor and the model config alike (the model reads the canvas from the
  config to un-pad the crop grid);
* Qwen2-VL / Qwen2.5-VL: ``max_pixels`` = 256 merged tokens' worth (256·28·28 pixels).

``"full"`` leaves the checkpoint's settings as they are (the default on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .adapters import get_adapter

__all__ = ["CAPS", "ResolutionCap", "apply_cap", "pick_cap"]

CAPS = ("full", "base")


@dataclass(frozen=True)
class ResolutionCap:
    """What a cap changed: ``name`` ("full"/"base"), a one-line ``label`` for people, and the
    settings set on the image processor and on the model config."""

    name: str
    label: str
    image_processor: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def pick_cap(requested: str, device_type: str) -> str:
    """``requested`` ("auto", "full" or "base") resolved for a device: auto = base on CPU, full on GPU."""
    if requested == "auto":
        return "full" if device_type == "cuda" else "base"
    if requested not in CAPS:
        raise ValueError(f"image cap must be auto, {' or '.join(CAPS)}; got {requested!r}")
    return requested


def apply_cap(model: nn.Module, processor: Any, name: str) -> ResolutionCap:
    """Set cap ``name`` on ``processor`` (and ``model.config`` where the family reads it there);
    returns what was set. Apply it once, right after loading: it changes both objects in place."""
    if name not in CAPS:
        raise ValueError(f"image cap must be {' or '.join(CAPS)}; got {name!r}")
    if name == "full":
        return ResolutionCap("full", "full resolution (the checkpoint's own settings)")
    cap = get_adapter(model).base_resolution(processor)
    image_processor = getattr(processor, "image_processor", processor)
    for key, value in cap.image_processor.items():
        setattr(image_processor, key, value)
    for key, value in cap.config.items():
        setattr(model.config, key, value)
    return cap
