"""Baseline token-dropping rules, run by the same engine (hooks, schedule, trace) as V²Drop.

Every rule here is registered under its own name, so ``v2drop.apply(model, schedule,
method="fastv")`` swaps only the choice of tokens; positions, masks, KV cache and trace work
exactly as for V²Drop. Kept tokens keep their ORIGINAL position ids for every method.

==============  ==============================================================================
``fastv``       FastV (Chen et al., ECCV 2024): at one layer K, keep the vision tokens that the
                last prompt token attends to most (mean over heads) in layer K-1, read from the
                FULL attention-weight matrix softmax(QKᵀ) of that layer (all heads, L×L), the
                way FastV's code gets it (``output_attentions`` → eager attention).
``fastv-lite``  The same ranking, recomputed from Q of the last token only (one row, H×L):
                identical choices, none of the L×L memory.
``pdrop``       PyramidDrop (Xing et al., CVPR 2025): at each stage boundary, the attention of the
                last instruction token, computed by hand with the projections of the layer about
                to run, ranks the vision tokens. PDrop renumbers position ids after each drop;
                this engine keeps the original ones.
``random``      Random dropping, seeded (``apply(..., seed=...)``): the sanity baseline of
                token-pruning papers (e.g. V²Drop's throughput table, "random dropping").
``uniform``     Spatially even subsampling over the vision-token sequence (every n/k-th alive
                token, in raster order), a simple baseline in the spirit of "Less is more:
                a simple yet effective token reduction method" (Song et al., 2024).
``downsample``  Pre-LLM pooling to the same budget: with a schedule ``"0:r"`` the vision tokens
                are average-pooled before layer 0 into ``floor(n·r)`` spatial windows (nearest
                lattice centre on the image grid), like the pooled-projector baselines that
                simple-baseline studies found hard to beat (e.g. LLaVA-OneVision's 2×2 bilinear
                pooling of video frames; "Feather the throttle", Endo et al., 2024).
==============  ==============================================================================

Which query do attention-ranked rules use? The last token of the *current forward input*
(``hidden[:, -1]``). In cached generation that is the last prompt token, as in FastV and
PDrop. ``generate(use_cache=False)`` re-runs the growing sequence at every step, so its last
token is the latest generated one and the kept set can differ from the cached run; rules that
do not look past the vision tokens (V²Drop, random, uniform, downsample) give the same tokens
with and without a cache. With left padding (what ``generate`` expects) the last token is
always real; prompts right-padded would query a pad token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .scoring import ScoreContext, register_method

__all__ = ["AttentionRule", "RandomRule", "UniformRule", "DownsampleRule", "last_token_attention",
           "square_side", "BASELINES"]


# ----------------------------------------------------------------------------- attention helpers
def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` (B, H, L, d); ``cos``/``sin`` (B or 1, L, d). Standard rotate-half RoPE; Qwen2-VL's
    M-RoPE cos/sin arrive already recomposed to (B, L, d), so the same formula applies."""
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


def _project(layer: torch.nn.Module, hidden: torch.Tensor, rows: slice | None,
             position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rotated queries (of ``rows`` only) and keys (all tokens, kv heads repeated for GQA)
    of ``layer``'s self-attention on input ``hidden``; returns (q, k, scaling)."""
    attn = layer.self_attn
    head_dim = int(getattr(attn, "head_dim", 0) or attn.q_proj.out_features // attn.config.num_attention_heads)
    x = layer.input_layernorm(hidden)
    batch, length, _ = x.shape
    xq = x if rows is None else x[:, rows]
    q = attn.q_proj(xq).view(batch, xq.shape[1], -1, head_dim)
    k = attn.k_proj(x).view(batch, length, -1, head_dim)
    if getattr(attn, "q_norm", None) is not None:  # Qwen3-style per-head norms
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2).float(), k.transpose(1, 2).float()
    cos, sin = (t.float() for t in position_embeddings)
    q = _rope(q, cos if rows is None else cos[:, rows], sin if rows is None else sin[:, rows])
    k = _rope(k, cos, sin)
    if k.shape[1] != q.shape[1]:  # grouped-query attention: repeat kv heads like repeat_kv
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scaling = float(getattr(attn, "scaling", head_dim ** -0.5))
    return q, k, scaling


def _allowed(mask: torch.Tensor | None, rows: torch.Tensor, length: int, batch: int, device) -> torch.Tensor:
    """Boolean ``(B, 1, len(rows), L)``: may query ``rows`` (indices into the current tokens) see
    each key? Causal always; padding from ``mask`` when given (None, 4-D bool or additive float,
    2-D FlashAttention padding mask), already sliced to the current tokens by the engine."""
    keys = torch.arange(length, device=device)
    allowed = (keys.view(1, -1) <= rows.view(-1, 1)).view(1, 1, len(rows), length).expand(batch, -1, -1, -1)
    if mask is None:
        return allowed
    mask = mask.to(device)
    if mask.dim() == 2:
        pad = mask[:, -length:].bool().view(batch, 1, 1, length)
        return allowed & pad
    if mask.dim() == 4:
        m = mask[:, :1, :, -length:]                       # keys of the current tokens are the last ones
        if m.shape[-2] != 1:                               # queries: the current tokens are the last rows
            m = m[:, :, rows - length + m.shape[-2]]
        ok = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
        return allowed & ok
    raise RuntimeError(f"unexpected attention mask of shape {tuple(mask.shape)}")


def last_token_attention(layer: torch.nn.Module, hidden: torch.Tensor,
                         position_embeddings: tuple[torch.Tensor, torch.Tensor],
                         attention_mask: torch.Tensor | None, full: bool) -> tuple[torch.Tensor, int]:
    """Attention weights (mean over heads) that the last token of ``hidden`` pays every token:
    ``(B, L)``. ``full=True`` materialises softmax(QKᵀ) for all heads, all L×L pairs (FastV's
    cost) and reads its last row; ``full=False`` computes the last row only. Also returns the
    bytes of the score tensor that was materialised."""
    batch, length, _ = hidden.shape
    device = hidden.device
    if full:
        q, k, scale = _project(layer, hidden, None, position_embeddings)
        rows = torch.arange(length, device=device)
    else:
        q, k, scale = _project(layer, hidden, slice(length - 1, length), position_embeddings)
        rows = torch.tensor([length - 1], device=device)
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale                     # (B, H, rows, L)
    logits = logits.masked_fill(~_allowed(attention_mask, rows, length, batch, device), float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    materialised = weights.numel() * weights.element_size()
    return weights[:, :, -1].mean(dim=1), materialised


# ----------------------------------------------------------------------------- rules
@dataclass
class AttentionRule:
    """Rank vision tokens by the attention the last token pays them.

    ``source="previous"``: layer K-1's attention, from its input and projections (FastV);
    ``source="current"``: the attention of the layer about to run, from its input (PDrop).
    ``full``: materialise the whole L×L softmax (True) or only the last row (False).
    ``materialised_bytes`` holds the size of the largest score tensor built so far (reset it
    to 0 to measure a run)."""

    name: str
    description: str
    source: str = "previous"
    full: bool = False
    allows_layer_zero: bool = False
    materialised_bytes: int = 0

    @property
    def needs_previous_hidden(self) -> bool:
        return self.source == "previous"

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        if ctx.position_embeddings is None:
            raise RuntimeError(f"method {self.name!r} needs the layer's rotary position embeddings")
        if self.source == "previous":
            layer, hidden = ctx.previous_layer, ctx.previous_hidden
            if layer is None or hidden is None:
                raise RuntimeError(f"method {self.name!r} needs the input of layer {ctx.layer_idx - 1}")
        else:
            layer, hidden = ctx.layer, ctx.hidden
        with torch.no_grad():
            attention, nbytes = last_token_attention(layer, hidden, ctx.position_embeddings,
                                                     ctx.attention_mask, self.full)
        self.materialised_bytes = max(self.materialised_bytes, nbytes)
        ctx.extras["attention_bytes"] = nbytes
        return attention.gather(1, ctx.vision_index.to(attention.device))


@dataclass(frozen=True)
class RandomRule:
    name: str = "random"
    description: str = ("Random dropping (seeded through apply(..., seed=...); each drop layer draws from "
                        "its own stream of that seed): the floor every scoring rule should beat, used as a "
                        "throughput reference in V²Drop's efficiency table. One seed is one draw: the app "
                        "draws a fresh seed per run and shows it.")
    needs_previous_hidden: bool = False
    allows_layer_zero: bool = True
    stochastic: bool = True   # its choice depends on the seed (the engine records the seed in the trace)

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        return torch.rand(ctx.vision_index.shape, generator=ctx.generator).to(ctx.hidden.device)


def _even_targets(n: int, k: int) -> torch.Tensor:
    """``k`` indices spread evenly over ``range(n)``: the centres of ``k`` equal windows."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    return ((torch.arange(k, dtype=torch.float64) + 0.5) * n / k).floor().long().clamp(max=n - 1)


def _one_hot_scores(index: torch.Tensor, n: int, batch: int, device) -> torch.Tensor:
    """Score 1 for ``index`` (then decreasing slightly, so ties never matter), 0 elsewhere."""
    scores = torch.zeros(n, dtype=torch.float32)
    if len(index):
        scores[index] = 1.0 + torch.linspace(1e-3, 0.0, len(index))
    return scores.to(device).unsqueeze(0).expand(batch, -1).clone()


@dataclass(frozen=True)
class UniformRule:
    name: str = "uniform"
    description: str = ("Spatially even subsampling: keep every n/k-th alive vision token in raster order "
                        "(the 'uniform sampling' baseline of token-reduction studies, e.g. Song et al., 2024).")
    needs_previous_hidden: bool = False
    allows_layer_zero: bool = True

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        batch, n = ctx.vision_index.shape
        return _one_hot_scores(_even_targets(n, ctx.keep_count), n, batch, ctx.hidden.device)


def square_side(count: int) -> int | None:
    """Side of a square grid with ``count`` cells, or None."""
    side = math.isqrt(count)
    return side if side * side == count else None


@dataclass(frozen=True)
class DownsampleRule:
    name: str = "downsample"
    description: str = ("Pre-LLM average pooling (schedule '0:r'): the vision tokens are pooled into floor(n·r) "
                        "spatial windows before the first decoder layer, like the pooled projectors that "
                        "simple-baseline studies found hard to beat (e.g. LLaVA-OneVision's 2×2 pooling).")
    needs_previous_hidden: bool = False
    allows_layer_zero: bool = True

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        """Window centres: an a×b lattice of windows over the (assumed square) grid, a·b ≥ k, the
        centre cell of each window; extra windows (a·b > k) lose their centre from the end of an
        interleaved order. A 1-D line of k equal windows when the grid is not square."""
        batch, n = ctx.vision_index.shape
        k = ctx.keep_count
        side = self._side(ctx, n)
        if side is None or k == 0:
            return _one_hot_scores(_even_targets(n, k), n, batch, ctx.hidden.device)
        a, b = _lattice(side, k)
        rows, cols = _even_targets(side, a), _even_targets(side, b)
        centres = (rows.view(-1, 1) * side + cols.view(1, -1)).flatten()
        order = torch.argsort(((torch.arange(a).view(-1, 1) % 2) * 2 + torch.arange(b).view(1, -1) % 2).flatten(),
                              stable=True)
        return _one_hot_scores(centres[order][:k], n, batch, ctx.hidden.device)

    @staticmethod
    def _side(ctx: ScoreContext, n: int) -> int | None:
        """Grid side when all the sample's vision tokens are alive and form one square grid."""
        total = int(ctx.vision_ordinal[0].max()) + 1 if n else 0
        side = square_side(total)
        return side if side is not None and n == total else None

    def merge(self, ctx: ScoreContext, chosen: torch.Tensor) -> torch.Tensor:
        """Each kept token becomes the mean of the tokens of its window (itself and the dropped
        tokens of the same lattice cell; a token whose window lost its centre joins the nearest
        kept token). Returns the ``(B, L, D)`` hidden states with the kept rows replaced."""
        hidden = ctx.hidden
        batch, n = ctx.vision_index.shape
        k = chosen.shape[1]
        if k == 0 or k == n:
            return hidden
        device = hidden.device
        side = self._side(ctx, n)
        if side is not None:
            a, b = _lattice(side, k)
            ordinal = ctx.vision_ordinal.to(device)
            row, col = ordinal // side, ordinal % side
            window = (row * a // side) * b + col * b // side                      # (B, n)
            coords = torch.stack([row, col], dim=-1).float()
        else:
            window = (torch.arange(n, device=device) * k // n).unsqueeze(0).expand(batch, -1)
            coords = torch.arange(n, device=device).float().view(1, n, 1).expand(batch, -1, -1)
        out = hidden.clone()
        for i in range(batch):
            kept = chosen[i].to(device)
            cost = torch.cdist(coords[i], coords[i, kept]) + 1e6 * (window[i].view(-1, 1) != window[i, kept].view(1, -1))
            owner = cost.argmin(dim=1)                                                  # (n,) into kept
            rows = hidden[i, ctx.vision_index[i]].float()                               # (n, D)
            sums = torch.zeros(k, rows.shape[1], device=device).index_add_(0, owner, rows)
            counts = torch.zeros(k, device=device).index_add_(0, owner, torch.ones(n, device=device))
            out[i, ctx.vision_index[i, kept]] = (sums / counts.clamp(min=1).unsqueeze(1)).to(hidden.dtype)
        return out


def _lattice(side: int, k: int) -> tuple[int, int]:
    """Rows × cols of pooling windows on a side×side grid with at least ``k`` windows."""
    a = min(side, math.ceil(math.sqrt(k)))
    return a, min(side, math.ceil(k / a))


BASELINES = {
    "fastv": AttentionRule(
        "fastv", source="previous", full=True,
        description="FastV (Chen et al., ECCV 2024): one-shot drop at layer K of the vision tokens least attended "
                    "by the last prompt token in layer K-1 (mean over heads), from the full L×L attention weights."),
    "fastv-lite": AttentionRule(
        "fastv-lite", source="previous", full=False,
        description="FastV's ranking computed from the last query row only (same tokens, no L×L attention matrix)."),
    "pdrop": AttentionRule(
        "pdrop", source="current", full=False,
        description="PyramidDrop (Xing et al., CVPR 2025): at each stage boundary, the last instruction token's "
                    "attention (that layer's own q/k projections) ranks the vision tokens; PDrop renumbers "
                    "positions, this engine keeps the original ones."),
    "random": RandomRule(),
    "uniform": UniformRule(),
    "downsample": DownsampleRule(),
}

for _rule in BASELINES.values():
    register_method(_rule)
