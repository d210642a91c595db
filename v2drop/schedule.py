"""Drop schedules: at which decoder layers vision tokens are dropped, and how many survive.

A schedule is an ordered list of ``(layer, keep_ratio)`` stages. Before decoder layer
``layer`` (0-based) runs, ``floor(n_alive * keep_ratio)`` of the ``n_alive`` vision tokens
still in the sequence are kept; the rest are gone for every later layer. Ratios therefore
compound: ``"3:0.5,17:0.3,22:0"`` on 576 tokens leaves 576 → 288 → 86 → 0.

The helpers here are pure arithmetic (no torch): how many vision tokens each layer sees,
the layer-averaged budget that papers report as "retained tokens", the predicted prefill
FLOPs ratio, and a solver that builds a schedule for a target average budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = ["DropSchedule", "PRESETS", "PAPER_DEPTH", "PAPER_LAYERS", "prefill_flops", "scale_layers", "fastv_layer",
           "pdrop_layers", "matched_schedule", "drop_layers", "default_schedule", "DEFAULT_BUDGET", "DEFAULT_RULE",
           "DEFAULT_STAGES", "first_layer_schedule"]

#: the paper's LLaVA-1.5-7B decoder depth and its V²Drop drop layers
PAPER_DEPTH = 32
PAPER_LAYERS = (3, 17, 22)


def scale_layers(layers: Sequence[int], num_layers: int, reference_layers: int = PAPER_DEPTH) -> tuple[int, ...]:
    """Move drop layers chosen for a ``reference_layers``-deep model to the same relative depth of
    a ``num_layers``-deep one: ``round(layer * num_layers / reference_layers)`` (halves up), kept in
    ``1 .. num_layers - 1`` and distinct (a collision moves to the next free layer). E.g. the paper's
    ``3, 17, 22`` of 32 become ``2, 13, 17`` of 24 and ``3, 15, 19`` of 28."""
    scaled: list[int] = []
    for layer in layers:
        new = min(num_layers - 1, max(1, math.floor(layer * num_layers / reference_layers + 0.5)))
        while new in scaled and new < num_layers - 1:
            new += 1
        if new in scaled:
            raise ValueError(f"{len(layers)} drop layers do not fit a {num_layers}-layer model")
        scaled.append(new)
    return tuple(scaled)


@dataclass(frozen=True)
class DropSchedule:
    """An ordered, validated list of ``(layer, keep_ratio)`` stages.

    ``keep_ratio`` is the share of the vision tokens *still alive* at that layer that is kept.
    Layers are 0-based decoder-layer indices; layer 0 is not allowed for variation-based
    methods because there is no previous layer to compare with (see :meth:`validate`).
    """

    stages: tuple[tuple[int, float], ...]

    def __init__(self, stages: Iterable[tuple[int, float]] = ()) -> None:
        normalised = tuple((_as_layer(layer), _as_ratio(ratio)) for layer, ratio in stages)
        layers = [layer for layer, _ in normalised]
        for a, b in zip(layers, layers[1:]):
            if b == a:
                raise ValueError(f"layer {a} appears twice in the schedule; each drop layer may appear once")
            if b < a:
                raise ValueError(f"drop layers must be in increasing order, got {a} before {b}")
        object.__setattr__(self, "stages", normalised)

    # ----------------------------------------------------------------- text form
    @classmethod
    def parse(cls, text: str) -> "DropSchedule":
        """Parse ``"3:0.5,17:0.3,22:0"``; ``""`` or ``"none"`` is the empty schedule."""
        if not isinstance(text, str):
            raise ValueError(f"a schedule must be text like '3:0.5,17:0.3', got {type(text).__name__}")
        body = text.strip()
        if body.lower() in ("", "none"):
            return cls(())
        stages = []
        for part in body.split(","):
            part = part.strip()
            if part.count(":") != 1:
                raise ValueError(f"cannot parse schedule stage {part!r}: expected 'layer:keep_ratio', e.g. '3:0.5'")
            layer_text, ratio_text = (p.strip() for p in part.split(":"))
            try:
                layer = int(layer_text)
            except ValueError:
                raise ValueError(f"cannot parse schedule stage {part!r}: layer {layer_text!r} is not an integer") from None
            try:
                ratio = float(ratio_text)
            except ValueError:
                raise ValueError(f"cannot parse schedule stage {part!r}: keep ratio {ratio_text!r} is not a number") from None
            stages.append((layer, ratio))
        return cls(stages)

    def __str__(self) -> str:
        if not self.stages:
            return "none"
        return ",".join(f"{layer}:{ratio:g}" for layer, ratio in self.stages)

    # ----------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str) -> "DropSchedule":
        """A named schedule from :data:`PRESETS` (see ``DropSchedule.preset_names()``)."""
        try:
            return cls.parse(PRESETS[name][0])
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None

    @staticmethod
    def preset_names() -> list[str]:
        return list(PRESETS)

    @classmethod
    def keep_all(cls, layers: Sequence[int]) -> "DropSchedule":
        """Every ratio 1.0: patches the model but drops nothing (the exactness check)."""
        return cls((layer, 1.0) for layer in layers)

    @classmethod
    def for_budget(
        cls,
        num_layers: int,
        layers: Sequence[int],
        target: float,
        num_vision_tokens: int = 10_000,
    ) -> "DropSchedule":
        """Build a schedule that drops at ``layers`` with one shared keep ratio, chosen so that the
        layer-averaged share of retained vision tokens is as close to ``target`` (in (0, 1]) as
        the layers allow. Raises ``ValueError`` if ``target`` is out of reach (e.g. below what
        dropping everything at the first layer gives)."""
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target budget must be in (0, 1], got {target}")
        if not layers:
            raise ValueError("for_budget needs at least one drop layer")

        def share(ratio: float) -> float:
            sched = cls((layer, ratio) for layer in layers)
            return sched.average_kept(num_layers, num_vision_tokens) / num_vision_tokens

        lowest = share(0.0)
        if target < lowest - 1e-9:
            raise ValueError(
                f"target {target:.3f} is below {lowest:.3f}, the budget of dropping every vision token at "
                f"layer {layers[0]}; choose an earlier first drop layer"
            )
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if share(mid) < target:
                lo = mid
            else:
                hi = mid
        return cls((layer, round(hi, 4)) for layer in layers).validate(num_layers)

    @classmethod
    def closest_to_budget(
        cls,
        num_layers: int,
        layers: Sequence[int],
        target: float,
        num_vision_tokens: int = 10_000,
    ) -> tuple["DropSchedule", str | None]:
        """:meth:`for_budget`, moving the first drop layer earlier when ``layers`` cannot reach
        ``target``, and clamping ``target`` to the smallest reachable share when even that fails.
        Returns ``(schedule, note)``; ``note`` says what was changed (``None`` if nothing)."""
        layers = tuple(layers)
        try:
            return cls.for_budget(num_layers, layers, target, num_vision_tokens), None
        except ValueError:
            pass
        first = max(1, int(target * num_layers / 2))
        early = tuple(sorted({first, *[layer for layer in layers if layer > first]}))
        try:
            return (cls.for_budget(num_layers, early, target, num_vision_tokens),
                    f"layers {layers} cannot reach {target:.3f}; used {early}")
        except ValueError:
            floor = cls([(early[0], 0.0)]).average_kept(num_layers, num_vision_tokens) / num_vision_tokens + 0.01
            return (cls.for_budget(num_layers, early, floor, num_vision_tokens),
                    f"{target:.3f} is unreachable without dropping at layer 0; clamped to {floor:.3f}")

    # ----------------------------------------------------------------- checks
    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(layer for layer, _ in self.stages)

    def scaled_to(self, num_layers: int, reference_layers: int = PAPER_DEPTH) -> "DropSchedule":
        """The same ratios with each drop layer moved to the same relative depth of a model with
        ``num_layers`` decoder layers (see :func:`scale_layers`)."""
        layers = scale_layers(self.layers, num_layers, reference_layers)
        return DropSchedule(zip(layers, (ratio for _, ratio in self.stages)))

    def validate(self, num_layers: int, allow_layer_zero: bool = False) -> "DropSchedule":
        """Check the schedule against a model with ``num_layers`` decoder layers; return self."""
        for layer, _ in self.stages:
            if layer == 0 and not allow_layer_zero:
                raise ValueError(
                    "layer 0 cannot be a drop layer: the variation score compares a layer's input with the "
                    "previous layer's input, and layer 0 has no previous layer"
                )
            if not 0 <= layer < num_layers:
                raise ValueError(f"drop layer {layer} is outside the model, whose decoder layers are 0..{num_layers - 1}")
        return self

    # ----------------------------------------------------------------- budgets
    def alive_per_layer(self, num_layers: int, num_vision_tokens: int) -> list[int]:
        """Vision tokens that each decoder layer processes during prefill."""
        alive, out = num_vision_tokens, []
        ratios = dict(self.stages)
        for layer in range(num_layers):
            if layer in ratios:
                alive = math.floor(alive * ratios[layer] + 1e-9)
            out.append(alive)
        return out

    def average_kept(self, num_layers: int, num_vision_tokens: int) -> float:
        """Layer-averaged retained vision tokens (what token-dropping papers call "retained tokens")."""
        return sum(self.alive_per_layer(num_layers, num_vision_tokens)) / num_layers

    def flops_ratio(
        self,
        num_layers: int,
        num_vision_tokens: int,
        num_text_tokens: int,
        hidden_size: int,
        intermediate_size: int,
        kv_hidden_size: int | None = None,
        gated_mlp: bool = True,
    ) -> float:
        """Predicted prefill FLOPs of the language model with this schedule, divided by unpruned."""
        dims = dict(hidden_size=hidden_size, intermediate_size=intermediate_size,
                    kv_hidden_size=kv_hidden_size, gated_mlp=gated_mlp)
        pruned = sum(prefill_flops(num_text_tokens + n, **dims)
                     for n in self.alive_per_layer(num_layers, num_vision_tokens))
        full = num_layers * prefill_flops(num_text_tokens + num_vision_tokens, **dims)
        return pruned / full


# --------------------------------------------------------------------- the default and the sweep's rule
#: the layer-averaged share of the vision tokens that the default schedule keeps
DEFAULT_BUDGET = 0.5
#: the default rule in words, for pages and docs (:func:`default_schedule`)
DEFAULT_RULE = ("the paper's drop layers (3, 17 and 22 of LLaMA's 32) moved to the same relative depth of "
                "this model, with one shared keep ratio solved so that, on layer average, half of the vision "
                "tokens are kept")
#: drop layers of a multi-stage schedule in the drop-layer sweep (V²Drop's paper schedules have three)
DEFAULT_STAGES = 3


def default_schedule(num_layers: int, num_vision_tokens: int = 10_000,
                     budget: float = DEFAULT_BUDGET) -> DropSchedule:
    """Every model's default schedule, by one rule that knows nothing of which method wins:
    :data:`PAPER_LAYERS` scaled to ``num_layers`` (:func:`scale_layers`; on a model too shallow for
    three distinct layers, the distinct ones of the same rounding), one shared keep ratio for a
    layer-averaged kept share of ``budget`` (:meth:`DropSchedule.for_budget`). E.g. 8 layers:
    ``1,4,6``; 24: ``2,13,17``; 28: ``3,15,19``. ``ValueError`` for a model with one layer."""
    if num_layers < 2:
        raise ValueError(f"a {num_layers}-layer model has no layer to drop at (layer 0 has no previous layer)")
    try:
        layers = scale_layers(PAPER_LAYERS, num_layers)
    except ValueError:
        layers = tuple(sorted({min(num_layers - 1, max(1, math.floor(layer * num_layers / PAPER_DEPTH + 0.5)))
                               for layer in PAPER_LAYERS}))
    return DropSchedule.for_budget(num_layers, layers, budget, num_vision_tokens)


def drop_layers(first_layer: int, num_layers: int, stages: int = DEFAULT_STAGES) -> tuple[int, ...]:
    """The drop layers of a multi-stage schedule that starts at ``first_layer`` on a decoder of
    ``num_layers`` layers (the drop-layer sweep's rule, ``benchmarks.sweep`` and the app's one-click
    sweep): the remaining depth ``D − L1`` is cut into ``stages`` equal parts and a stage starts
    each part, ``L1 + floor(k·(D − L1) / stages)`` for ``k = 0 .. stages−1``, deduplicated (all < D
    by construction). On 8 layers: L1=1 → 1,3,5; 2 → 2,4,6 (the Shapes presets' layers); 3 → 3,4,6;
    5 → 5,6,7; 6 → 6,7; 7 → 7."""
    if not 1 <= first_layer < num_layers:
        raise ValueError(f"first drop layer {first_layer} must be in 1 .. {num_layers - 1} "
                         "(layer 0 has no previous layer to compare with)")
    return tuple(sorted({first_layer + k * (num_layers - first_layer) // stages for k in range(stages)}))


def first_layer_schedule(first_layer: int, num_layers: int, budget: float, num_vision_tokens: int,
                         stages: int = DEFAULT_STAGES) -> DropSchedule:
    """The drop-layer sweep's multi-stage schedule: stages at :func:`drop_layers`, one shared keep
    ratio for a layer-averaged kept share of ``budget``. ``ValueError`` when the position cannot
    reach the budget (dropping everything at ``first_layer`` keeps more): nothing is moved or clamped."""
    return DropSchedule.for_budget(num_layers, drop_layers(first_layer, num_layers, stages), budget, num_vision_tokens)


# --------------------------------------------------------------------- baselines' schedules
def fastv_layer(num_layers: int) -> int:
    """FastV's drop layer scaled to the model: its code drops before layer 3 of 32."""
    return max(1, int(3 * num_layers / 32 + 0.5))


def pdrop_layers(num_layers: int) -> tuple[int, ...]:
    """PyramidDrop's stage boundaries (8, 16, 24 of 32 layers), scaled."""
    return tuple(sorted({max(1, num_layers * i // 4) for i in (1, 2, 3)}))


def matched_schedule(method: str, reference: DropSchedule, num_layers: int, n: int) -> tuple[DropSchedule, str | None]:
    """The schedule ``method`` runs at the layer-averaged budget of V²Drop's ``reference`` (``n`` vision
    tokens): FastV one stage at :func:`fastv_layer`, PDrop its :func:`pdrop_layers` with one shared ratio,
    ``downsample`` pooling before layer 0, every other rule ``reference`` itself (only the choice of
    tokens differs). Returns ``(schedule, note)``, the note saying what had to change to reach the budget."""
    target = reference.average_kept(num_layers, n) / n
    if method in ("v2drop", "v2drop-l1", "v2drop-cosine", "random", "uniform", "none"):
        return reference, None
    if method in ("fastv", "fastv-lite"):
        return DropSchedule.closest_to_budget(num_layers, (fastv_layer(num_layers),), target, n)
    if method == "pdrop":
        return DropSchedule.closest_to_budget(num_layers, pdrop_layers(num_layers), target, n)
    if method == "downsample":
        return DropSchedule([(0, round(target, 4))]), None
    return reference, None


def prefill_flops(
    num_tokens: int,
    hidden_size: int,
    intermediate_size: int,
    kv_hidden_size: int | None = None,
    gated_mlp: bool = True,
) -> float:
    """Multiply-add FLOPs (×2) of one decoder layer over ``num_tokens`` tokens in prefill:
    the q/k/v/o projections, the two attention matmuls (causal, so half of n²), and the MLP."""
    n, d = num_tokens, hidden_size
    d_kv = hidden_size if kv_hidden_size is None else kv_hidden_size
    projections = 2 * n * (2 * d * d + 2 * d * d_kv)
    attention = 2 * 2 * d * n * (n + 1) / 2
    mlp = 2 * n * d * intermediate_size * (3 if gated_mlp else 2)
    return projections + attention + mlp


def _as_layer(layer: object) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"a drop layer must be an integer, got {layer!r}")
    if layer < 0:
        raise ValueError(f"drop layer {layer} is negative; layers are 0-based decoder indices")
    return layer


def _as_ratio(ratio: object) -> float:
    try:
        value = float(ratio)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"a keep ratio must be a number in [0, 1], got {ratio!r}") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"keep ratio {value} is outside [0, 1]: it is the share of alive vision tokens kept")
    return value


# name -> (schedule text, description). LLaVA-1.5 "prune X %" is read as X % of the tokens
# still alive, which reproduces the paper's 192/128/64 budgets to within 3 tokens.
PRESETS: dict[str, tuple[str, str]] = {
    "llava-1.5-192": ("3:0.5,17:0.3,22:0", "paper, LLaVA-1.5-7B, ~192 of 576 tokens (prune 50/70/100 %)"),
    "llava-1.5-128": ("3:0.28,17:0.25,22:0", "paper, LLaVA-1.5-7B, ~128 of 576 tokens (prune 72/75/100 %)"),
    "llava-1.5-64": ("3:0.05,17:0.05,22:0", "paper, LLaVA-1.5-7B, ~64 of 576 tokens (prune 95/95/100 %)"),
    "llava-1.5-official": ("3:0.5,17:0.5,22:0", "official code's LLaVA-1.5 ratios (it keeps 1 token at 22, we keep 0)"),
    "qwen2-vl-official": ("3:0.25,16:0.05,22:0", "official code's Qwen2-VL schedule (~77.8 % reduction)"),
    "shapes-50%": ("2:0.6,4:0.5,6:0.3", "embedded shapes model (8 layers): ~1/2 of its 256 tokens on layer average"),
    "shapes-33%": ("2:0.25,4:0.4,6:0.25", "embedded shapes model: ~1/3 on layer average"),
    "shapes-15%": ("1:0.1,3:0.2,5:0", "embedded shapes model: ~15 % (1/8 is the floor once layer 0 sees all)"),
}
