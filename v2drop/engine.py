"""The engine: drop vision tokens inside a stock transformers model, with hooks only.

``apply(model, schedule)`` installs forward pre-hooks; leaving the ``with`` block removes them,
so the model is exactly what it was. Nothing in transformers is replaced or copied.

How it works. The decoder loop of a transformers 5.x language model calls every layer with
the same full-length ``attention_mask`` and rotary ``position_embeddings``, built once per
forward. A pre-hook on each layer:

1. at a drop layer (prefill only), scores the alive vision tokens, keeps the top ``k`` in their
   original order and shortens the hidden states: later layers receive the shorter sequence;
2. slices the layer's mask and rotary embeddings down to the tokens it actually sees, so kept
   tokens keep their ORIGINAL positions (M-RoPE included) and padding stays masked;
3. remembers which original positions the layer's KV cache holds, so that during decoding the
   mask (sized for layer 0's full cache) is sliced to each layer's shorter cache.

Ragged batches. Each sample is scored on its own and keeps ⌊n_i × r⌋ of its own vision tokens,
as it would alone. Its kept tokens are packed in order; a sample that keeps fewer than the widest
is left-padded with *filler* slots (copies of its first kept slot, so that every sample's last
token stays in the last column). A validity record ``(B, L)`` follows the tokens through the
forward pass and into each layer's cache, and every fitted mask hides the filler keys (the 4-D
masks of sdpa/eager, the 2-D padding mask of FlashAttention's unpadded path; one is built where
the decoder passed none). Filler queries see what the slot they copy sees, so no row is empty.
In a prefill that drops, a hook pair on each layer's MLP runs it on the valid slots only (fillers,
and the prompt's padding that the first drop discards, add zero): most of a slot's cost is its MLP.

New tokens are numbered from layer 0's cache length, which never shrinks, so their positions
continue from the unpruned prompt length, as in the paper's code.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from . import compat
from .adapters import ModelAdapter, get_adapter
from .memory import memory_now, module_device
from .schedule import DropSchedule
from .scoring import ScoreContext, ScoringRule, get_method, variation
from .trace import SampleTrace, Trace

__all__ = ["apply", "DropSession", "layer_seed"]


@contextlib.contextmanager
def apply(
    model: nn.Module,
    schedule: DropSchedule | str,
    method: str = "v2drop",
    *,
    trace_all_layers: bool = False,
    seed: int = 0,
) -> Iterator["DropSession"]:
    """Patch ``model`` in place so that it drops vision tokens by ``schedule``; restore on exit.

    ``schedule`` is a :class:`DropSchedule` or its text form (``"3:0.5,17:0.3,22:0"``).
    ``method`` names a scoring rule (``v2drop.available_methods()``). With
    ``trace_all_layers=True`` the trace also holds the L2 variation of every alive vision
    token at every layer (for heatmaps), at the cost of one norm per layer.

    Yields the :class:`DropSession`; ``session.trace`` describes the latest sequence run.
    """
    session = DropSession(model, schedule, method, trace_all_layers=trace_all_layers, seed=seed)
    session.install()
    try:
        yield session
    finally:
        session.remove()


def layer_seed(seed: int, layer: int) -> int:
    """The generator seed of drop layer ``layer`` in a run seeded ``seed``: distinct for every
    (seed, layer) pair (``seed + layer`` would give run 1's layer 2 the mask of run 0's layer 3)."""
    return ((int(seed) << 16) ^ int(layer)) & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class _Sequence:
    """State that lives as long as one generated sequence (one KV cache)."""

    batch_size: int
    prompt_ids: torch.Tensor | None                 # (B, L) input ids of the first forward
    kv_index: list[torch.Tensor | None]             # per layer: original positions in its cache, None = all
    kv_valid: list[torch.Tensor | None] = field(default_factory=list)  # per layer: (B, K) False = filler slot


@dataclass
class _Forward:
    """State that lives for one forward pass through the decoder layers."""

    past: int                                       # tokens already in layer 0's cache
    positions: torch.Tensor                         # (B, L_cur) original positions of the tokens alive now
    ordinal: torch.Tensor                           # (B, L_cur) index in the sample's vision sequence, -1 = text
    may_drop: bool                                  # multi-token input that holds vision tokens
    length: int = 0                                 # tokens in this forward's input, before any drop
    valid: torch.Tensor | None = None               # (B, L_cur) False = filler or padding slot; None = all real
    will_drop: bool = False                         # the first stage drops a vision token: padding is discarded
    version: int = 0                                # bumps each time the token set shrinks
    previous_hidden: torch.Tensor | None = None     # input of the previous layer, when a score needs it
    memo: dict = field(default_factory=dict)        # sliced kwargs shared by layers with the same token set


class DropSession:
    """Hooks, state and trace of one ``apply`` call. Use :func:`apply` rather than this class."""

    def __init__(
        self,
        model: nn.Module,
        schedule: DropSchedule | str,
        method: str = "v2drop",
        trace_all_layers: bool = False,
        seed: int = 0,
    ) -> None:
        compat.check_transformers_version()
        self.model = model
        self.adapter: ModelAdapter = get_adapter(model)
        self.rule: ScoringRule = get_method(method)
        self.schedule = DropSchedule.parse(schedule) if isinstance(schedule, str) else schedule
        self.layers = self.adapter.decoder_layers()
        self.num_layers = len(self.layers)
        self.schedule.validate(self.num_layers, allow_layer_zero=self.rule.allows_layer_zero)
        if compat.uses_sliding_window(self.adapter.text_config):
            raise compat_error("sliding-window attention layers are not supported")
        self.ratios = dict(self.schedule.stages)
        self.trace_all_layers = trace_all_layers
        self.seed = seed
        self.vision_ids = torch.tensor(self.adapter.vision_token_ids())
        self.trace = Trace(method=method, schedule=str(self.schedule), num_layers=self.num_layers,
                           seed=seed if getattr(self.rule, "stochastic", False) else None)
        self._handles: list[Any] = []
        self._sequence: _Sequence | None = None
        self._forward: _Forward | None = None
        self._pending: dict[str, Any] = {}
        self._timer = 0.0
        self._is_cuda = False

    # ------------------------------------------------------------------ install / remove
    def install(self) -> None:
        self._handles.append(self.model.register_forward_pre_hook(self._before_model, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._after_model, with_kwargs=True))
        for idx, layer in enumerate(self.layers):
            hook = _LayerHook(self, idx)
            self._handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
            mlp = self.adapter.decoder_mlp(layer)
            if mlp is not None:
                rows = _ValidRowsMLP(self)
                self._handles.append(mlp.register_forward_pre_hook(rows.before))
                self._handles.append(mlp.register_forward_hook(rows.after))

    def remove(self) -> None:
        self._unhook()
        self._sequence = self._forward = None
        self._pending = {}

    def _unhook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Run the unmodified model for a while (e.g. a step of the unpruned baseline), keeping
        this session's sequence state so that its own generation can continue afterwards."""
        self._unhook()
        try:
            yield
        finally:
            self.install()

    def relayout(self, inputs: dict[str, Any]) -> None:
        """Recompute each sample's patch layout from the processor's full output. ``generate()``
        encodes the pixels itself and does not pass ``image_sizes`` / grids to the forward pass,
        so layouts that depend on them (LLaVA-NeXT/OneVision crops) can otherwise be guessed."""
        input_ids = inputs["input_ids"]
        for b, sample in enumerate(self.trace.samples[: input_ids.shape[0]]):
            layout = self.adapter.layout(input_ids, b, dict(inputs))
            if layout is not None:
                sample.layout = layout

    def reset_trace(self) -> None:
        self.trace = Trace(method=self.trace.method, schedule=self.trace.schedule, num_layers=self.num_layers,
                           seed=self.trace.seed)

    # ------------------------------------------------------------------ model-level hooks
    def _before_model(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = compat.cache_from_kwargs(kwargs)
        past = compat.past_length(cache)
        device = module_device(module)
        self._is_cuda = device.type == "cuda"
        if past == 0 and not self._continues_without_cache(input_ids):
            self._start_sequence(input_ids, kwargs)
        self._pending = {"input_ids": input_ids, "past": past, "cache": cache,
                         "attention_mask": kwargs.get("attention_mask")}
        _synchronize(self._is_cuda)
        self._timer = time.perf_counter()

    def _after_model(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        _synchronize(self._is_cuda)
        elapsed = time.perf_counter() - self._timer
        trace = self.trace
        input_ids = self._pending.get("input_ids")
        q = input_ids.shape[1] if input_ids is not None else 0
        if trace.prefill_calls == 0:
            trace.prefill_seconds += elapsed
            trace.prompt_tokens = q
        else:
            trace.decode_seconds += elapsed
        trace.prefill_calls += int(self._pending.get("past", 0) == 0)
        trace.tokens_generated += 1
        trace.kv_cache_bytes = compat.kv_cache_bytes(self._pending.get("cache"))
        self._sample_memory()
        self._forward = None

    def _continues_without_cache(self, input_ids: torch.Tensor | None) -> bool:
        """``generate(use_cache=False)`` re-runs the whole, one-token-longer sequence each step."""
        seq = self._sequence
        if seq is None or seq.prompt_ids is None or input_ids is None:
            return False
        prompt = seq.prompt_ids
        return (input_ids.shape[0] == prompt.shape[0] and input_ids.shape[1] > prompt.shape[1]
                and torch.equal(input_ids[:, : prompt.shape[1]], prompt.to(input_ids.device)))

    def _start_sequence(self, input_ids: torch.Tensor | None, kwargs: dict) -> None:
        batch = input_ids.shape[0] if input_ids is not None else 1
        self._sequence = _Sequence(
            batch_size=batch,
            prompt_ids=input_ids.detach().clone() if input_ids is not None else None,
            kv_index=[None] * self.num_layers,
            kv_valid=[None] * self.num_layers,
        )
        self.reset_trace()
        if self._is_cuda:
            torch.cuda.reset_peak_memory_stats()
        if input_ids is None:
            return
        vision = torch.isin(input_ids, self.vision_ids.to(input_ids.device))
        layout_inputs = {k: kwargs.get(k) for k in ("image_grid_thw", "video_grid_thw", "image_sizes", "position_ids")}
        for b in range(batch):
            positions = vision[b].nonzero().flatten().tolist()
            self.trace.samples.append(SampleTrace(
                num_vision_tokens=len(positions),
                vision_positions=positions,
                alive_per_layer=[len(positions)] * self.num_layers,
                layout=self.adapter.layout(input_ids, b, layout_inputs),
            ))

    def _sample_memory(self) -> None:
        peak, kind = memory_now(torch.device("cuda" if self._is_cuda else "cpu"))
        if peak is not None:
            self.trace.peak_memory_bytes = max(self.trace.peak_memory_bytes or 0, peak)
            self.trace.memory_kind = kind

    # ------------------------------------------------------------------ layer-level hook
    def before_layer(self, idx: int, hidden: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, dict]:
        """Drop tokens (at drop layers), then fit the layer's kwargs to the tokens it sees."""
        if idx == 0:
            compat.check_layer_kwargs(kwargs)
            self._begin_forward(hidden, kwargs)
        fwd, seq = self._forward, self._sequence
        if fwd is None or seq is None:  # the layers were called outside the model's forward
            return hidden, kwargs
        if not self._is_cuda:
            self._sample_memory()

        layer_kwargs = kwargs
        if fwd.version or seq.kv_index[idx] is not None:
            layer_kwargs = self._fit_kwargs(idx, kwargs, fwd, seq)

        if fwd.may_drop and idx in self.ratios:
            hidden = self._drop(idx, hidden, layer_kwargs, fwd)
            layer_kwargs = self._fit_kwargs(idx, kwargs, fwd, seq)
        elif fwd.may_drop and self.trace_all_layers and fwd.previous_hidden is not None:
            self._record_variation(idx, hidden, fwd)

        self._remember_cache(idx, layer_kwargs, fwd, seq)
        if fwd.may_drop:
            self._record_alive(idx, fwd)
            next_scores = (idx + 1) in self.ratios and self.rule.needs_previous_hidden
            fwd.previous_hidden = hidden if (next_scores or self.trace_all_layers) else None
        return hidden, layer_kwargs

    def filler_rows(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """``(B, L)`` True at the valid slots of a decoder layer's ``hidden`` where the batch holds
        slots whose output no valid token reads: fillers after a drop, and a prompt's padding when
        the first stage will drop (that drop discards it); None otherwise (nothing to skip). Without
        a drop the padding is part of the unmodified model's output, so it runs as usual."""
        fwd = self._forward
        if fwd is None or fwd.valid is None or not (fwd.version or fwd.will_drop):
            return None
        if hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(fwd.valid.shape):
            return None
        return fwd.valid.to(hidden.device)

    def _begin_forward(self, hidden: torch.Tensor, kwargs: dict) -> None:
        batch, q = hidden.shape[:2]
        pending, seq = self._pending, self._sequence
        if seq is None:  # the language model was called directly: no input ids, nothing to drop
            self._start_sequence(None, kwargs)
            seq = self._sequence
        past = int(pending.get("past", compat.past_length(compat.cache_from_kwargs(kwargs))))
        device = hidden.device
        positions = (torch.arange(q, device=device) + past).unsqueeze(0).expand(batch, -1)
        ordinal = torch.full((batch, q), -1, dtype=torch.long, device=device)
        input_ids = pending.get("input_ids")
        if input_ids is not None and input_ids.shape[:2] == (batch, q) and past == 0:
            vision = torch.isin(input_ids, self.vision_ids.to(input_ids.device)).to(device)
            ordinal = torch.where(vision, vision.long().cumsum(1) - 1, ordinal)
        may_drop = q > 1 and bool((ordinal >= 0).any()) and bool(self.ratios)
        self._forward = _Forward(
            past=past, positions=positions, ordinal=ordinal, length=q, may_drop=may_drop,
            valid=_prompt_padding(pending.get("attention_mask"), batch, q, past, device),
            will_drop=may_drop and self._first_stage_drops(ordinal),
        )

    def _first_stage_drops(self, ordinal: torch.Tensor) -> bool:
        """Whether the first drop stage removes a vision token of some sample (``_choose`` keeps
        ⌊n × r⌋ of n), which also discards the prompt's padding."""
        ratio = self.ratios[min(self.ratios)]
        return any(_keep_count(n, ratio) < n for n in (ordinal >= 0).sum(1).tolist())

    # ------------------------------------------------------------------ dropping
    def _drop(self, idx: int, hidden: torch.Tensor, layer_kwargs: dict, fwd: _Forward) -> torch.Tensor:
        """Score each sample's alive vision tokens on its own, keep ⌊n_i × r⌋ of them, and pack the
        kept tokens of every sample to the left-padded width of the longest (see :func:`_pack`)."""
        is_vision = fwd.ordinal >= 0                                   # (B, L)
        keep_mask = ~is_vision if fwd.valid is None else ~is_vision & fwd.valid   # text stays, padding goes
        start = time.perf_counter()
        rows = [self._choose(idx, b, hidden, layer_kwargs, fwd, keep_mask) for b in range(hidden.shape[0])]
        if getattr(self.rule, "merge", None) is not None:  # e.g. pooling: kept tokens absorbed dropped ones
            hidden = torch.cat(rows)
        self.trace.scoring_seconds += time.perf_counter() - start
        if bool((keep_mask | ~is_vision).all()):  # no vision token dropped (keep-all): the sequence stays as it is
            return hidden

        kept_index, valid = _pack(keep_mask)                           # (B, L_new), (B, L_new) or None
        hidden = _take(hidden, kept_index, dim=1)
        if fwd.previous_hidden is not None:
            fwd.previous_hidden = _take(fwd.previous_hidden, kept_index, dim=1)
        fwd.positions = fwd.positions.gather(1, kept_index)
        fwd.ordinal = fwd.ordinal.gather(1, kept_index)
        if valid is not None:
            fwd.ordinal = fwd.ordinal.masked_fill(~valid, -1)          # filler slots are never vision tokens
        fwd.valid = valid
        fwd.version += 1
        fwd.memo.clear()
        return hidden

    def _choose(self, idx: int, b: int, hidden: torch.Tensor, layer_kwargs: dict, fwd: _Forward,
                keep_mask: torch.Tensor) -> torch.Tensor:
        """Choose sample ``b``'s kept vision tokens, as if it ran alone: mark them in ``keep_mask``
        (B, L), record them in the trace; returns the sample's (1, L, D) hidden states (merged, for
        pooling rules)."""
        row = hidden[b:b + 1]                                          # (1, L, D)
        vision_index = (fwd.ordinal[b] >= 0).nonzero().view(1, -1)     # (1, n) positions in `hidden`
        n = vision_index.shape[1]
        if n == 0 or b >= len(self.trace.samples):
            return row
        keep = _keep_count(n, self.ratios[idx])
        vision_ordinal = fwd.ordinal[b:b + 1].gather(1, vision_index)  # (1, n)
        previous = fwd.previous_hidden
        ctx = ScoreContext(
            layer_idx=idx, hidden=row, previous_hidden=None if previous is None else previous[b:b + 1],
            vision_index=vision_index, vision_ordinal=vision_ordinal, keep_count=keep,
            layer=self.layers[idx], previous_layer=self.layers[idx - 1] if idx > 0 else None,
            position_embeddings=_sample_rows(layer_kwargs.get("position_embeddings"), b),
            attention_mask=_sample_rows(layer_kwargs.get("attention_mask"), b),
            generator=torch.Generator(device="cpu").manual_seed(layer_seed(self.seed, idx)),
        )
        if self.rule.needs_previous_hidden and ctx.previous_hidden is None:
            raise RuntimeError(f"method {self.rule.name!r} needs the input of layer {idx - 1}, which was not seen")
        scores = self.rule.score(ctx)
        if scores.shape != (1, n):
            raise RuntimeError(f"method {self.rule.name!r} returned scores of shape {tuple(scores.shape)}, "
                               f"expected {(1, n)}")
        chosen = scores.float().topk(keep, dim=1).indices.sort(dim=1).values   # (1, k) into the n
        keep_mask[b, vision_index[0, chosen[0]]] = True
        sample = self.trace.samples[b]
        sample.kept[idx] = vision_ordinal[0, chosen[0]].tolist()
        sample.scores[idx] = {"index": vision_ordinal[0].tolist(), "score": scores[0].float().tolist()}
        merge = getattr(self.rule, "merge", None)
        return row if merge is None else merge(ctx, chosen)

    def _record_variation(self, idx: int, hidden: torch.Tensor, fwd: _Forward) -> None:
        """Trace-only: L2 variation of every alive vision token at a layer that does not drop."""
        for b, sample in enumerate(self.trace.samples[: hidden.shape[0]]):
            index = (fwd.ordinal[b] >= 0).nonzero().flatten()          # (n,) positions in `hidden`
            if index.numel() == 0:
                continue
            score = variation(hidden[b, index], fwd.previous_hidden[b, index])
            sample.scores[idx] = {"index": fwd.ordinal[b, index].tolist(), "score": score.tolist()}

    def _record_alive(self, idx: int, fwd: _Forward) -> None:
        alive = (fwd.ordinal >= 0).sum(1).tolist()
        for b, sample in enumerate(self.trace.samples[: len(alive)]):
            sample.alive_per_layer[idx] = int(alive[b])

    # ------------------------------------------------------------------ fitting kwargs
    def _fit_kwargs(self, idx: int, kwargs: dict, fwd: _Forward, seq: _Sequence) -> dict:
        """Slice the full-length mask / rotary embeddings / position ids to this layer's tokens."""
        key = (fwd.version, id(seq.kv_index[idx]))  # layers whose caches hold the same tokens share slices
        if key in fwd.memo:
            return {**kwargs, **fwd.memo[key]}
        query = fwd.positions - fwd.past                                  # (B, L_cur) into the full query
        past_keys = seq.kv_index[idx]
        if past_keys is None:
            past_keys = torch.arange(fwd.past, device=query.device).unsqueeze(0).expand(query.shape[0], -1)
        keys = torch.cat([past_keys.to(query.device), fwd.positions], dim=1)  # (B, K_layer)
        fitted: dict[str, Any] = {}
        if fwd.version:
            cos, sin = kwargs["position_embeddings"]
            fitted["position_embeddings"] = (_take(cos, query, dim=-2), _take(sin, query, dim=-2))
            position_ids = kwargs.get("position_ids")
            if compat.detects_packing_from_positions(self.adapter.text_config):
                # FlashAttention reads gaps in position ids as packed sequences; rotary phases
                # come from position_embeddings, so the layer needs no ids at all.
                fitted["position_ids"] = None
            elif isinstance(position_ids, torch.Tensor):
                fitted["position_ids"] = _take(position_ids, query, dim=-1)
        mask = _fit_mask(kwargs.get("attention_mask"), query, keys)
        key_valid = _cat_valid(seq.kv_valid[idx], past_keys.shape[1], fwd.valid, fwd.positions.shape[1])
        if key_valid is not None:  # a ragged batch: filler slots must never be attended to
            dtype = kwargs["position_embeddings"][0].dtype
            mask = _mask_fillers(mask, key_valid, fwd.positions, keys, self._mask_style(), dtype)
        fitted["attention_mask"] = mask
        fwd.memo[key] = fitted
        return {**kwargs, **fitted}

    def _mask_style(self) -> str:
        """How this model's attention kernel reads a mask, for building one where the decoder
        passed none (no padding): "2d" (FlashAttention), "additive" (eager) or "boolean" (sdpa)."""
        if compat.detects_packing_from_positions(self.adapter.text_config):
            return "2d"
        implementation = str(getattr(self.adapter.text_config, "_attn_implementation", "") or "")
        return "additive" if implementation == "eager" else "boolean"

    def _remember_cache(self, idx: int, layer_kwargs: dict, fwd: _Forward, seq: _Sequence) -> None:
        """Record which original positions layer ``idx``'s cache will hold after this forward."""
        cache = compat.cache_from_kwargs(layer_kwargs)
        if cache is None or not layer_kwargs.get("use_cache", True):
            return
        before = seq.kv_index[idx]
        held = compat.cached_length(cache, idx)
        expected = fwd.past if before is None else before.shape[1]
        if held != expected:
            raise RuntimeError(
                f"layer {idx}'s KV cache holds {held} tokens but v2drop expected {expected}; a cache that "
                "was filled outside this apply() block, cropped, or reordered cannot be continued"
            )
        if before is None and fwd.version == 0:
            return  # nothing dropped so far: the cache stays the plain full sequence
        if before is None:
            before = torch.arange(fwd.past, device=fwd.positions.device).unsqueeze(0).expand(fwd.positions.shape[0], -1)
        seq.kv_valid[idx] = _cat_valid(seq.kv_valid[idx], before.shape[1], fwd.valid, fwd.positions.shape[1])
        seq.kv_index[idx] = torch.cat([before.to(fwd.positions.device), fwd.positions], dim=1)
        if idx == 0 and before.shape[1] == fwd.past and fwd.version:
            # A drop before layer 0 (pre-LLM pooling rules) shortens layer 0's cache, from which
            # transformers reads the sequence length (new tokens' positions, mask sizes): make
            # that cache layer report every token the sequence has seen, as it would unpruned.
            compat.report_full_length(cache, 0, fwd.length - fwd.positions.shape[1])


class _LayerHook:
    """A forward pre-hook bound to one decoder layer index."""

    def __init__(self, session: DropSession, idx: int) -> None:
        self.session, self.idx = session, idx

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            hidden, rest = args[0], args[1:]
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        hidden, kwargs = self.session.before_layer(self.idx, hidden, kwargs)
        return (hidden, *rest), kwargs


class _ValidRowsMLP:
    """A forward pre-hook and hook pair on one decoder layer's MLP: where the packed batch holds
    filler slots, the MLP runs on the valid rows only, ``(N_valid, D)``, and its output is scattered
    back into zeros ``(B, L, D)``. A filler then adds nothing to its own residual; it is masked as a
    key in every layer and dropped at every later drop, so no valid token reads it. The MLP costs
    most of a layer (Qwen2-VL-2B: ~7x the attention projections), so this is most of a filler's cost."""

    def __init__(self, session: DropSession) -> None:
        self.session = session
        self._rows: torch.Tensor | None = None       # validity of the call in flight

    def before(self, module: nn.Module, args: tuple) -> tuple | None:
        self._rows = self.session.filler_rows(args[0]) if args else None
        return None if self._rows is None else (args[0][self._rows], *args[1:])

    def after(self, module: nn.Module, args: tuple, output: Any) -> torch.Tensor | None:
        rows, self._rows = self._rows, None
        if rows is None or not isinstance(output, torch.Tensor):
            return None
        full = output.new_zeros(*rows.shape, output.shape[-1])
        full[rows] = output
        return full


# ---------------------------------------------------------------------- tensor helpers
def _keep_count(n: int, ratio: float) -> int:
    """Vision tokens a sample with ``n`` alive keeps at a stage of keep ratio ``ratio``: ⌊n × r⌋
    (the epsilon keeps 0.29 × 100, 28.999…, at 29), as :meth:`DropSchedule.alive_per_layer` counts them."""
    return math.floor(n * ratio + 1e-9)


def _take(tensor: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-sample gather along ``dim``: ``tensor`` is ``(B or 1, ..., S, ...)`` with the batch
    in dim 0 (or dim 1 for ``(3, B, S)`` M-RoPE ids), ``index`` is ``(B, S')``."""
    dim = dim % tensor.dim()
    batch = index.shape[0]
    batch_dim = 1 if (tensor.dim() == 3 and dim == 2 and tensor.shape[0] == 3 and index.shape[0] != 3
                      and tensor.shape[1] in (1, batch)) else 0
    if batch_dim == 1:  # (3, B, S) position ids
        return torch.stack([_take(t, index, dim=1) for t in tensor])
    if tensor.shape[0] == 1 and batch > 1:
        tensor = tensor.expand(batch, *tensor.shape[1:])
    shape = [batch] + [1] * (tensor.dim() - 1)
    shape[dim] = index.shape[1]
    expanded = index.view(shape).expand(*[s if i != dim else index.shape[1] for i, s in enumerate(tensor.shape)])
    return tensor.gather(dim, expanded.to(tensor.device))


def _fit_mask(mask: Any, query: torch.Tensor, keys: torch.Tensor) -> Any:
    """Slice a mask built for the full sequence: 4-D ``(B, H, Q, K)`` on both query and key,
    2-D ``(B, K)`` (FlashAttention padding mask) on the key; ``None`` stays ``None``."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise RuntimeError(f"v2drop cannot slice an attention mask of type {type(mask).__name__} "
                           "(flex attention is not supported); use sdpa, eager or flash_attention_2")
    if mask.dim() == 4:
        rows = _take(mask, query, dim=2)
        return _take(rows, keys, dim=3)
    if mask.dim() == 2:
        return _take(mask, keys, dim=1)
    raise RuntimeError(f"unexpected attention mask of shape {tuple(mask.shape)}")


def _prompt_padding(mask: Any, batch: int, length: int, past: int, device: torch.device) -> torch.Tensor | None:
    """A prompt's padding as filler slots: ``(B, L)`` False where the 2-D attention mask pads a
    prefill (masked for every key already), None without padding. The first drop removes them with
    the dropped vision tokens, so that a short prompt does not keep the batch wide."""
    if past or not isinstance(mask, torch.Tensor) or mask.dim() != 2 or tuple(mask.shape) != (batch, length):
        return None
    valid = mask.to(device).bool()
    return None if bool(valid.all()) else valid


def _pack(keep_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Indices of the kept slots of ``keep_mask`` (B, L), ascending per sample, packed to the widest
    sample's count: ``(index (B, W), valid (B, W) or None)``. A sample that keeps fewer tokens is
    left-padded with filler slots (``valid`` False) that repeat its first kept slot, so that every
    sample's last token stays in the last column (generation reads the logits there)."""
    batch, length = keep_mask.shape
    counts = keep_mask.sum(1)                                          # (B,)
    width = int(counts.max())
    arange = torch.arange(length, device=keep_mask.device)
    ascending = torch.where(keep_mask, arange, arange + length).sort(dim=1).values[:, :width]  # kept first
    if bool((counts == width).all()):
        return ascending, None
    slot = torch.arange(width, device=keep_mask.device) - (width - counts).unsqueeze(1)     # (B, W), <0 = filler
    index = ascending.gather(1, slot.clamp(min=0)).clamp(max=length - 1)
    return index, slot >= 0


def _cat_valid(before: torch.Tensor | None, before_len: int, now: torch.Tensor | None,
               now_len: int) -> torch.Tensor | None:
    """Validity of a cache's slots followed by this forward's: (B, before_len + now_len), None if all valid."""
    if before is None and now is None:
        return None
    ref = before if before is not None else now
    ones = lambda n: torch.ones(ref.shape[0], n, dtype=torch.bool, device=ref.device)  # noqa: E731
    return torch.cat([before if before is not None else ones(before_len),
                      now.to(ref.device) if now is not None else ones(now_len)], dim=1)


def _mask_fillers(mask: Any, key_valid: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor,
                  style: str, dtype: torch.dtype) -> torch.Tensor:
    """``mask`` (already fitted to this layer's tokens) with filler key slots masked. Where the
    decoder passed no mask (no padding: causal by position), one is built: a key is seen by a query
    at the same or a later original position. ``key_valid`` (B, K); positions (B, Q) and (B, K)."""
    if mask is None:
        if style == "2d":
            return key_valid
        mask = (key_pos.unsqueeze(1) <= query_pos.unsqueeze(2)).unsqueeze(1)      # (B, 1, Q, K) causal
        if style == "additive":
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    key_valid = key_valid.to(mask.device)
    if mask.dim() == 2:
        return (mask.bool() & key_valid).to(mask.dtype)
    if mask.dtype == torch.bool:
        return mask & key_valid[:, None, None, :]
    return mask.masked_fill(~key_valid[:, None, None, :], torch.finfo(mask.dtype).min)


def _sample_rows(value: Any, b: int) -> Any:
    """Sample ``b``'s rows of a batched kwarg (a tensor, or a tuple such as (cos, sin)); a tensor
    with a batch of one is shared by every sample."""
    if isinstance(value, tuple):
        return tuple(_sample_rows(v, b) for v in value)
    if isinstance(value, torch.Tensor) and value.dim() > 1 and value.shape[0] > 1:
        return value[b:b + 1]
    return value


def compat_error(message: str) -> RuntimeError:
    return RuntimeError(f"v2drop cannot patch this model: {message}")


def _synchronize(is_cuda: bool) -> None:
    if is_cuda:
        torch.cuda.synchronize()


