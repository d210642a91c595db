"""Scoring rules: which alive vision tokens a drop layer keeps.

A rule turns a :class:`ScoreContext` (what the engine knows just before a drop layer runs)
into one score per alive vision token; the engine keeps the ``k`` highest. V²Drop's rules
look only at hidden states, so they work with any attention kernel (SDPA, FlashAttention).
Baselines (a later module) register themselves here under their own names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

__all__ = ["ScoreContext", "ScoringRule", "register_method", "get_method", "available_methods", "variation"]


@dataclass
class ScoreContext:
    """Everything a scoring rule may look at, for one drop layer and one sample.

    The engine scores each sample of a batch on its own (``B`` = 1), so that a sample keeps the
    same tokens in any batch as alone, whatever its number of vision tokens. Shapes: ``B`` batch,
    ``L`` tokens currently in the sequence (padding included), ``n`` alive vision tokens, ``D``
    hidden size.
    """

    layer_idx: int
    hidden: torch.Tensor                     # (B, L, D) input of layer ``layer_idx``
    previous_hidden: torch.Tensor | None     # (B, L, D) input of layer ``layer_idx - 1``, same tokens
    vision_index: torch.Tensor               # (B, n) positions of the alive vision tokens in ``hidden``
    vision_ordinal: torch.Tensor             # (B, n) their index in the sample's original vision sequence
    keep_count: int                          # how many of the ``n`` the engine will keep
    layer: torch.nn.Module | None = None     # decoder layer ``layer_idx``
    previous_layer: torch.nn.Module | None = None
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None  # (cos, sin), each (B, L, head_dim)
    attention_mask: torch.Tensor | None = None  # the layer's mask, already sliced to the current tokens
    generator: torch.Generator | None = None    # seeded, for stochastic rules
    extras: dict = field(default_factory=dict)  # per-rule scratch space (e.g. memory used for attention)

    def gather(self, states: torch.Tensor) -> torch.Tensor:
        """Pick the alive vision rows out of a ``(B, L, D)`` tensor: returns ``(B, n, D)``."""
        index = self.vision_index.unsqueeze(-1).expand(-1, -1, states.shape[-1])
        return states.gather(1, index)


class ScoringRule(Protocol):
    """``score(ctx) -> (B, n)`` tensor; larger means "keep"."""

    name: str
    needs_previous_hidden: bool   # the engine keeps the previous layer's input only if needed
    allows_layer_zero: bool       # may a schedule drop before layer 0?
    description: str

    def score(self, ctx: ScoreContext) -> torch.Tensor: ...

    # Optional: ``merge(ctx, chosen) -> (B, L, D)`` hidden states to use before the kept tokens
    # are gathered (``chosen``: (B, k) indices into the ``n`` alive vision tokens), for rules
    # that pool dropped tokens into kept ones instead of discarding them.


@dataclass(frozen=True)
class FunctionRule:
    """A scoring rule made from a plain function."""

    name: str
    fn: Callable[[ScoreContext], torch.Tensor]
    description: str
    needs_previous_hidden: bool = False
    allows_layer_zero: bool = False

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        return self.fn(ctx)


_REGISTRY: dict[str, ScoringRule] = {}


def register_method(rule: ScoringRule) -> ScoringRule:
    """Add a scoring rule to the registry used by ``v2drop.apply(..., method=name)``."""
    _REGISTRY[rule.name] = rule
    return rule


def get_method(name: str) -> ScoringRule:
    _load_builtin_baselines()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None


def available_methods() -> list[str]:
    _load_builtin_baselines()
    return list(_REGISTRY)


def _load_builtin_baselines() -> None:
    """Import the baseline rules on first use: they register themselves on import, and they import
    this module, so importing them at the top would be circular. A failing import is an error."""
    from . import baselines  # noqa: F401  (registers on import)


# ----------------------------------------------------------------------------- V²Drop
def variation(hidden: torch.Tensor, previous: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """Per-token variation between two ``(..., D)`` hidden states; larger = more change.

    ``l2``/``l1``: norm of the difference over the hidden dimension. ``cosine``: one minus the
    cosine similarity, so that larger still means "changed more". Computed in float32 so that
    bf16/fp16 models rank tokens the same way the float32 reference does.
    """
    a, b = hidden.float(), previous.float()
    if metric == "l2":
        return torch.linalg.vector_norm(a - b, ord=2, dim=-1)
    if metric == "l1":
        return torch.linalg.vector_norm(a - b, ord=1, dim=-1)
    if metric == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=-1)
    raise ValueError(f"unknown variation metric {metric!r}; use 'l2', 'l1' or 'cosine'")


def _variation_rule(metric: str) -> Callable[[ScoreContext], torch.Tensor]:
    def score(ctx: ScoreContext) -> torch.Tensor:
        assert ctx.previous_hidden is not None, "variation rules need the previous layer's input"
        return variation(ctx.gather(ctx.hidden), ctx.gather(ctx.previous_hidden), metric)

    return score


register_method(FunctionRule(
    "v2drop", _variation_rule("l2"), needs_previous_hidden=True,
    description="V²Drop (Chen et al., CVPR 2026): keep the tokens whose hidden state changed most "
                "(L2 norm of the previous layer's update).",
))
register_method(FunctionRule(
    "v2drop-l1", _variation_rule("l1"), needs_previous_hidden=True,
    description="V²Drop with the L1 norm of the update (the paper's ablation).",
))
register_method(FunctionRule(
    "v2drop-cosine", _variation_rule("cosine"), needs_previous_hidden=True,
    description="V²Drop with cosine distance between consecutive layers (the first code release's metric).",
))
