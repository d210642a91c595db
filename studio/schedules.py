"""Schedule arithmetic for the page: the presets offered for a model, and a schedule's predicted
budget (tokens kept per layer, prefill FLOPs). Each function takes a loaded model or anything with
its ``config`` (a :class:`studio.registry.ModelCard`), so that no model has to be loaded for it."""

from __future__ import annotations

from typing import Any

import torch

from v2drop.adapters import adapter_class, decoder_depth
from v2drop.schedule import PAPER_LAYERS, PRESETS, DropSchedule, default_schedule, scale_layers

__all__ = ["nominal_vision_tokens", "num_decoder_layers", "presets_for", "schedule_summary", "DEFAULT_PRESET"]

DEFAULT_PRESET = "default"  # the preset that follows v2drop.schedule.default_schedule


def nominal_vision_tokens(model: torch.nn.Module, last_count: int | None = None) -> int:
    """Vision tokens of one image, for schedule arithmetic before a run: the last run's count when
    known (dynamic-resolution models), else the base grid of the vision tower (LLaVA-style)."""
    if last_count:
        return int(last_count)
    vision = getattr(model.config, "vision_config", None)
    try:
        side = int(vision.image_size) // int(vision.patch_size)
        return side * side
    except (AttributeError, TypeError, ZeroDivisionError):
        return 1024


def _text_config(model: torch.nn.Module) -> Any:
    return model.config.get_text_config(decoder=True)


def num_decoder_layers(model: torch.nn.Module) -> int:
    return decoder_depth(model)


def presets_for(model: torch.nn.Module, is_embedded: bool = False) -> list[tuple[str, str, str]]:
    """``[(name, schedule text, description)]``: the default (one rule for every model,
    :func:`v2drop.schedule.default_schedule`) first, then the model's own presets, then the
    paper's (those that do not fit the model's depth are kept but marked), then depth-scaled ones."""
    layers = num_decoder_layers(model)
    try:
        default = [(DEFAULT_PRESET, str(default_schedule(layers, nominal_vision_tokens(model))),
                    "the default rule: the paper's layers scaled to this depth, 1/2 of the tokens on layer average")]
    except ValueError:  # a one-layer model: nothing to drop
        default = []
    if is_embedded:
        own = [n for n in PRESETS if n.startswith("shapes-")]
    else:
        family = adapter_class(model)
        own = list(family.own_presets(layers)) if family is not None else []
    out = default + [(n, PRESETS[n][0], PRESETS[n][1] + " (this model's)") for n in own]
    for name, (text, desc) in PRESETS.items():
        if name in own:
            continue
        fits = max(DropSchedule.parse(text).layers, default=0) < layers
        out.append((name, text, desc + ("" if fits else f" — does not fit this {layers}-layer model")))
    # the paper's layers 3/17/22 of 32, scaled to this depth, at a few budgets
    try:
        scaled = scale_layers(PAPER_LAYERS, layers)
    except ValueError:  # too shallow for three distinct drop layers
        return out
    for target in (0.5, 0.33, 0.15):
        try:
            sched = DropSchedule.for_budget(layers, scaled, target)
        except ValueError:
            continue
        out.append((f"scaled-{round(target * 100)}%", str(sched),
                    f"paper's layers scaled to {layers} layers, ~{round(target * 100)} % of tokens on layer average"))
    return out


def schedule_summary(schedule: DropSchedule, model: torch.nn.Module, num_vision_tokens: int,
                     num_text_tokens: int = 32) -> dict[str, Any]:
    """Validate ``schedule`` for ``model`` and predict its budget. Raises ``ValueError`` with a
    readable reason for an impossible schedule."""
    layers = num_decoder_layers(model)
    schedule.validate(layers)
    cfg = _text_config(model)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    alive = schedule.alive_per_layer(layers, num_vision_tokens)
    ratio = schedule.flops_ratio(layers, num_vision_tokens, num_text_tokens, int(cfg.hidden_size),
                                 int(cfg.intermediate_size), kv_hidden_size=kv_heads * head_dim)
    return {
        "num_layers": layers,
        "num_vision_tokens": num_vision_tokens,
        "alive_per_layer": alive,
        "average_kept": schedule.average_kept(layers, num_vision_tokens),
        "flops_ratio": ratio,
        "flops_saving": 1.0 - ratio,
    }
