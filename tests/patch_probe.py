"""Find which vision tokens a region of the image feeds, through the model's own code.

The vision tower of a fixture is swapped for one whose output at each patch is the mean colour of
that patch's pixels (after the processor's resizing, cropping and tiling), and the projector for
a copy of those three channels. Everything between the tower and the language model stays the
family's own code: LLaVA-NeXT/OneVision anyres tiling, un-padding, OneVision's down-sampling,
newline tokens; Qwen2-VL's patch flattening and 2×2 merging. The language model's input
embeddings at the vision positions then say, token by token, which pixels fed it: planting a
marker in the image changes exactly the tokens whose pixels it covers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from v2drop import get_adapter

NEWLINE_VALUE = 1000.0  # what the stand-in model puts in channel 0 of a newline token


class PatchMeanTower(nn.Module):
    """CLIP/SigLIP stand-in: hidden state ``k`` of every layer = mean RGB of patch ``k``
    (channels 0-2, zero elsewhere), after a CLS row when the real tower has one."""

    def __init__(self, patch_size: int, hidden: int, num_layers: int, with_cls: bool) -> None:
        super().__init__()
        self.patch_size, self.hidden, self.num_layers, self.with_cls = patch_size, hidden, num_layers, with_cls
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a dtype and device

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> BaseModelOutputWithPooling:
        means = F.avg_pool2d(pixel_values.float(), self.patch_size).flatten(2).transpose(1, 2)  # (B, N, 3)
        states = F.pad(means, (0, self.hidden - 3))
        if self.with_cls:
            states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
        return BaseModelOutputWithPooling(last_hidden_state=states, hidden_states=(states,) * (self.num_layers + 1))


class MergedPatchMeanVisual(nn.Module):
    """Qwen2-VL / Qwen2.5-VL stand-in: the mean RGB of each merged ``merge × merge`` block of
    patches (the processor lays each block's patches out consecutively)."""

    def __init__(self, merge: int, out_hidden: int, channels: int = 3) -> None:
        super().__init__()
        self.spatial_merge_size, self.out_hidden, self.channels = merge, out_hidden, channels
        self.anchor = nn.Parameter(torch.zeros(1))

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **_: Any) -> BaseModelOutputWithPooling:
        patch_means = hidden_states.float().reshape(hidden_states.shape[0], self.channels, -1).mean(-1)
        merged = patch_means.reshape(-1, self.spatial_merge_size ** 2, self.channels).mean(1)
        out = F.pad(merged, (0, self.out_hidden - self.channels))
        return BaseModelOutputWithPooling(last_hidden_state=out, pooler_output=out)


def install_probe(model: nn.Module) -> None:
    """Swap ``model``'s vision tower and projector for the patch-mean stand-ins (in place)."""
    inner, config = model.model, model.config
    text_hidden = config.get_text_config().hidden_size
    if hasattr(inner, "visual"):
        inner.visual = MergedPatchMeanVisual(int(config.vision_config.spatial_merge_size), text_hidden)
        return
    vision = config.vision_config
    inner.vision_tower = PatchMeanTower(int(vision.patch_size), int(vision.hidden_size), int(vision.num_hidden_layers),
                                       with_cls=vision.model_type == "clip_vision_model")
    projector = nn.Linear(int(vision.hidden_size), text_hidden, bias=False)
    with torch.no_grad():
        projector.weight.zero_()
        projector.weight[:3, :3] = torch.eye(3)
    inner.multi_modal_projector = projector
    if getattr(inner, "image_newline", None) is not None:
        with torch.no_grad():
            inner.image_newline.zero_()
            inner.image_newline[0] = NEWLINE_VALUE


class _Captured(Exception):
    """Stops the forward pass once the language model's inputs are known."""


def vision_embeddings(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """``(num_vision_tokens, 3)``: channels 0-2 of the language model's input embeddings at the
    vision positions of sample 0 (the language model itself is not run)."""
    found: dict[str, torch.Tensor] = {}

    def grab(_module, args, kwargs):
        found["embeds"] = kwargs.get("inputs_embeds")
        raise _Captured

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    ids = inputs["input_ids"][0]
    vision = torch.isin(ids, torch.tensor(get_adapter(model).vision_token_ids()))
    return found["embeds"][0, vision, :3].float()
