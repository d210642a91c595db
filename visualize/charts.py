"""Plotly charts of a run: vision tokens alive per layer, latency / speed / memory of the
unpruned and the V²Drop run side by side, and the share of the tokens that matter (ground truth or
marked) still alive per layer, per method (:func:`matters_chart`). Inputs are a
:class:`v2drop.Trace` and run statistics as dicts (``RunStats.to_dict()`` from :mod:`studio.pair`,
or any dict with the same keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from v2drop.trace import SampleTrace, Trace

__all__ = ["alive_chart", "performance_chart", "metrics_rows", "too_short", "METRIC_HEADERS", "retention_chart",
           "COLOURS", "METRICS", "alive_per_frame", "frame_timeline", "sweep_chart", "MattersSeries", "matters_alive",
           "matters_series", "matters_chart"]

COLOURS = {"unpruned": "#7f8c8d", "V²Drop": "#e4572e"}
# (key in the stats dict, title, unit, scale)
METRICS = [
    ("prefill_seconds", "Prefill time", "ms", 1e3),
    ("first_token_seconds", "First token (own)", "ms", 1e3),   # each run's own inputs + prefill
    ("decode_tokens_per_second", "Decode speed", "tokens/s", 1.0),
    ("total_seconds", "Total time", "ms", 1e3),
    ("peak_memory_bytes", "Peak memory", "MiB", 1 / 2**20),
    ("kv_cache_bytes", "KV cache", "KiB", 1 / 2**10),
]
METRIC_HEADERS = ["metric", "unpruned", "V²Drop", "change"]


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01), height=height, margin=dict(l=50, r=20, t=70, b=40),
                      template="plotly_white", legend=dict(orientation="h", y=-0.2))
    return fig


def alive_chart(trace: Trace, sample: int = 0) -> go.Figure:
    """Vision tokens entering each decoder layer: V²Drop (steps down at the drop layers) against the
    unpruned model (flat). Drop layers are marked."""
    s: SampleTrace = trace.samples[sample]
    layers = list(range(trace.num_layers))
    alive = list(s.alive_per_layer) or [s.num_vision_tokens] * trace.num_layers
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=layers, y=[s.num_vision_tokens] * len(layers), name="unpruned",
                             mode="lines", line=dict(color=COLOURS["unpruned"], dash="dash", shape="hv")))
    fig.add_trace(go.Scatter(x=layers, y=alive, name="V²Drop", mode="lines+markers",
                             line=dict(color=COLOURS["V²Drop"], shape="hv"),
                             hovertemplate="layer %{x}: %{y} vision tokens<extra></extra>"))
    for layer in sorted(s.kept):
        fig.add_vline(x=layer, line=dict(color="#bbbbbb", width=1, dash="dot"))
    avg = sum(alive) / len(alive) if alive else 0
    fig.update_xaxes(title_text="decoder layer", dtick=1 if len(layers) <= 32 else None)
    fig.update_yaxes(title_text="vision tokens alive", rangemode="tozero")
    return _layout(fig, f"Vision tokens alive per layer<br><sup>layer average {avg:.1f} of {s.num_vision_tokens}"
                        "</sup>", 330)


def _value(stats: Mapping[str, Any], key: str) -> float | None:
    value = stats.get(key)
    if value is None and key == "total_seconds" and "prefill_seconds" in stats:
        value = (stats.get("prefill_seconds") or 0) + (stats.get("decode_seconds") or 0)
    return None if value is None else float(value)


def too_short(stats: Mapping[str, Any]) -> str | None:
    """"too short (1 step)" when a run decoded too few tokens for its decode speed to mean anything
    (``RunStats`` leaves the speed out below ``min_decode_steps``), else None."""
    steps, needed = stats.get("decode_steps"), stats.get("min_decode_steps")
    if stats.get("decode_tokens_per_second") is None and steps is not None and needed and steps < needed:
        return f"too short ({steps} step{'' if steps == 1 else 's'})"
    return None


def performance_chart(full: Mapping[str, Any], drop: Mapping[str, Any]) -> go.Figure:
    """One small bar chart per metric (prefill time, decode speed, total time, peak memory, KV cache),
    unpruned vs V²Drop. A decode speed over too few tokens is not drawn: the panel says so."""
    cols = 3  # two rows of three small panels: readable on a phone too
    fig = make_subplots(rows=-(-len(METRICS) // cols), cols=cols, horizontal_spacing=0.12, vertical_spacing=0.22,
                        subplot_titles=[f"{t}<br>({u})" for _, t, u, _ in METRICS])
    for i, (key, title, unit, scale) in enumerate(METRICS):
        for name, stats in (("unpruned", full), ("V²Drop", drop)):
            value = _value(stats, key)
            fig.add_trace(go.Bar(x=[name], y=[None if value is None else value * scale], name=name,
                                 marker_color=COLOURS[name], showlegend=i == 0,
                                 hovertemplate=f"{name}: %{{y:.4g}} {unit}<extra>{title}</extra>"),
                          row=i // cols + 1, col=i % cols + 1)
    short = too_short(full) or too_short(drop)
    if short:
        n = [k for k, *_ in METRICS].index("decode_tokens_per_second") + 1
        fig.add_annotation(text=short.replace(" (", "<br>("), showarrow=False, font=dict(size=11, color="#555"),
                           xref=f"x{n} domain", yref=f"y{n} domain", x=0.5, y=0.5)
        fig.update_yaxes(showticklabels=False, showgrid=False, row=(n - 1) // cols + 1, col=(n - 1) % cols + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_annotations(font_size=11)
    memory = full.get("memory_kind") or drop.get("memory_kind") or ""
    note = "<br><sup>peak memory: process RSS, shared by both runs</sup>" if memory == "process_rss" else ""
    fig = _layout(fig, "Unpruned vs V²Drop" + note, 440)
    return fig.update_layout(margin=dict(t=100, b=50), legend=dict(orientation="h", y=-0.06, yanchor="top"))


def metrics_rows(full: Mapping[str, Any], drop: Mapping[str, Any]) -> list[list[str]]:
    """The chart's numbers as table rows ``[metric, unpruned, V²Drop, change]``."""
    rows = []
    extra = [("tokens", "Generated tokens", "", 1.0), ("prompt_tokens", "Prompt tokens", "", 1.0)]
    for key, title, unit, scale in METRICS + extra:
        a, b = _value(full, key), _value(drop, key)
        short = key == "decode_tokens_per_second"
        fa = (short and too_short(full)) or ("–" if a is None else f"{a * scale:.4g}")
        fb = (short and too_short(drop)) or ("–" if b is None else f"{b * scale:.4g}")
        change = "–" if a in (None, 0) or b is None else f"{(b - a) / a * 100:+.1f} %"
        rows.append([f"{title}" + (f" ({unit})" if unit else ""), fa, fb, change])
    return rows


def retention_chart(samples: Sequence[SampleTrace], layer: int | None = None, bins: int = 8) -> go.Figure:
    """The paper's Fig. 2: share of vision tokens kept per position interval of the vision sequence
    (after the last drop layer ``< layer``, or after the first drop layer when ``layer`` is None).
    Attention-based rules keep mostly the end of the sequence; variation is close to uniform."""
    fig = go.Figure()
    kept_share = np.zeros(bins)
    total = np.zeros(bins)
    for s in samples:
        if not s.kept:
            continue
        drop_layer = min(s.kept) if layer is None else max([d for d in s.kept if d <= layer] or [min(s.kept)])
        n = s.num_vision_tokens
        edges = np.linspace(0, n, bins + 1)
        alive = set(s.alive_after(drop_layer))
        for b in range(bins):
            lo, hi = int(edges[b]), int(edges[b + 1])
            total[b] += hi - lo
            kept_share[b] += sum(1 for i in range(lo, hi) if i in alive)
    share = np.divide(kept_share, total, out=np.zeros(bins), where=total > 0) * 100
    labels = [f"{round(100 * b / bins)}–{round(100 * (b + 1) / bins)} %" for b in range(bins)]
    fig.add_trace(go.Bar(x=labels, y=share, marker_color=COLOURS["V²Drop"], name="kept"))
    fig.update_xaxes(title_text="position in the vision-token sequence")
    fig.update_yaxes(title_text="kept (%)", range=[0, 100])
    return _layout(fig, "Retention by position<br><sup>no positional bias = flat bars</sup>", 290)


# ------------------------------------------------------------------------------------ what matters
MATTERS_COLOURS = {"unpruned": COLOURS["unpruned"], "V²Drop": COLOURS["V²Drop"]}
BASELINE_COLOUR = "#2f6db5"
MATTERS_SOURCES = {"truth": "Ground truth: the question's objects", "marked": "Hand-marked patches"}


@dataclass
class MattersSeries:
    """One method's line of the what-matters chart: of the ``total`` tokens that matter, how many
    each decoder layer processes (``alive[layer]``)."""

    name: str
    alive: list[int]
    total: int

    @property
    def shares(self) -> list[float]:
        """The share (0..1) of the tokens that matter alive at each layer (1 when there are none)."""
        return [a / self.total if self.total else 1.0 for a in self.alive]


def matters_alive(sample: SampleTrace | None, tokens: Iterable[int], num_layers: int) -> list[int]:
    """How many of ``tokens`` (vision-token ordinals) each decoder layer processes, after its own
    drop (``sample.alive_after``). ``sample=None`` is the unpruned model: all of them everywhere."""
    wanted = {int(t) for t in tokens}
    if sample is None:
        return [len(wanted)] * num_layers
    return [len(wanted.intersection(sample.alive_after(layer))) for layer in range(num_layers)]


def matters_series(runs: Mapping[str, SampleTrace | None], tokens: Iterable[int],
                   num_layers: int) -> list[MattersSeries]:
    """One :class:`MattersSeries` per run (name -> its sample; None for the unpruned model), in order."""
    tokens = sorted({int(t) for t in tokens})
    return [MattersSeries(name, matters_alive(sample, tokens, num_layers), len(tokens))
            for name, sample in runs.items()]


def matters_chart(series: Sequence[MattersSeries], source: str = "truth",
                  drop_layers: Sequence[int] = ()) -> go.Figure:
    """x = decoder layer, y = share of the tokens that matter still alive there, one line per
    method (the unpruned model stays at 100 %). ``source``: ``"truth"`` (a generated scene's
    objects named by the question) or ``"marked"`` (what the visitor marked); the title says which.
    Hover gives the counts; dotted lines mark ``drop_layers``."""
    if source not in MATTERS_SOURCES:
        raise ValueError(f"source must be one of {sorted(MATTERS_SOURCES)}, got {source!r}")
    fig = go.Figure()
    for s in series:
        colour = MATTERS_COLOURS.get(s.name, BASELINE_COLOUR)
        average = 100 * sum(s.shares) / len(s.shares) if s.shares else 100.0
        fig.add_trace(go.Scatter(
            x=list(range(len(s.alive))), y=[100 * v for v in s.shares], customdata=s.alive,
            name=f"{s.name} (layer average {average:.0f} %)", mode="lines+markers",
            line=dict(color=colour, shape="hv", dash="dash" if s.name == "unpruned" else "solid"),
            hovertemplate=f"{s.name}, layer %{{x}}: %{{customdata}} of {s.total} alive (%{{y:.0f}} %)<extra></extra>"))
    for layer in sorted(drop_layers):
        fig.add_vline(x=layer, line=dict(color="#bbbbbb", width=1, dash="dot"))
    total = series[0].total if series else 0
    layers = len(series[0].alive) if series else 0
    fig.update_xaxes(title_text="decoder layer", dtick=1 if layers <= 32 else None)
    fig.update_yaxes(title_text="alive (%)", range=[-3, 105])
    _layout(fig, f"{MATTERS_SOURCES[source]}<br><sup>{total} vision tokens</sup>", 370)
    return fig.update_layout(legend=dict(orientation="h", y=-0.32), margin=dict(b=80))


def alive_per_frame(sample: SampleTrace, num_layers: int) -> np.ndarray:
    """``(layout frames, layers)`` int array: vision tokens of each frame (token grid) that each
    decoder layer processes. Column sums equal ``sample.alive_per_layer``."""
    if sample.layout is None:
        raise ValueError("the trace has no patch layout: cannot tell which frame a token belongs to")
    frame_of = np.asarray([cell[0] for cell in sample.layout.cells], dtype=np.int64)
    counts = np.zeros((len(sample.layout.grids), num_layers), dtype=np.int64)
    for layer in range(num_layers):
        alive = np.asarray(sample.alive_after(layer), dtype=np.int64)
        counts[:, layer] = np.bincount(frame_of[alive], minlength=counts.shape[0]) if alive.size else 0
    return counts


def frame_timeline(trace: Trace, sample: int = 0, step: int = 1, timestamps: Sequence[float] | None = None,
                   num_frames: int | None = None) -> go.Figure:
    """Kept vision tokens per video frame per decoder layer, as a heatmap (frames × layers).

    One row per token grid of the layout (``step`` sampled frames each: 2 for Qwen2-VL's temporal
    patches, 1 for LLaVA-OneVision); value = that frame's tokens alive at that layer. Frames whose
    row fades early lost their tokens to other frames in V²Drop's single pool over the video."""
    from .overlay import frame_labels

    s: SampleTrace = trace.samples[sample]
    counts = alive_per_frame(s, trace.num_layers)
    totals = counts[:, 0] if counts.shape[1] else np.zeros(len(counts), dtype=np.int64)
    n_frames = num_frames if num_frames is not None else len(counts) * max(1, step)
    labels = frame_labels(len(counts), n_frames, step, timestamps)
    share = np.divide(counts, np.maximum(totals, 1)[:, None]) * 100
    fig = go.Figure(go.Heatmap(
        z=counts, x=list(range(trace.num_layers)), y=labels, customdata=share, colorscale="Inferno",
        zmin=0, colorbar=dict(title="kept"), ygap=1,
        hovertemplate="%{y}, layer %{x}: %{z} tokens kept (%{customdata:.0f} %)<extra></extra>"))
    for layer in sorted(s.kept):
        fig.add_vline(x=layer - 0.5, line=dict(color="#4fc3f7", width=1, dash="dot"))
    fig.update_xaxes(title_text="decoder layer", dtick=1 if trace.num_layers <= 32 else None)
    fig.update_yaxes(title_text="frame", autorange="reversed", type="category", tickmode="array",
                     tickvals=labels, ticktext=labels)
    return _layout(fig, "Kept vision tokens per frame and layer<br><sup>dotted: drop layers</sup>",
                   max(300, 130 + 28 * len(labels)))


# one look per method of the sweep figure, in drawing order: every line keeps its own colour, dash
# and marker, and each is drawn thinner than the one before, so a line that coincides with an
# earlier one (random and uniform keep the same share of the object patches) still shows around it
SWEEP_PALETTE = ["#e4572e", "#17bebb", "#76b041", "#7f8c8d", "#c99700", "#2e282a", "#8e7dbe"]
SWEEP_DASHES = ["solid", "dot", "dashdot", "solid", "dash", "longdash", "longdashdot"]
SWEEP_SYMBOLS = ["circle", "square", "diamond", "x", "triangle-up", "star", "cross"]
SWEEP_ROWS = ((1, "relative", "accuracy,<br>% of unpruned"), (2, "recall_at_first_drop", "object patches<br>alive, %"))


def sweep_style(i: int, n: int) -> dict:
    """The line and marker of the ``i``-th of ``n`` methods: widths 5.5 down to 1.5 px."""
    width = 5.5 - 4.0 * i / max(1, n - 1)
    return dict(line=dict(color=SWEEP_PALETTE[i % len(SWEEP_PALETTE)], width=width, dash=SWEEP_DASHES[i % 7]),
                marker=dict(symbol=SWEEP_SYMBOLS[i % 7], size=6 + width, line=dict(width=0)))


def _sweep_lines(fig: go.Figure, rows: list, budget: float, col: int, methods: list[str]) -> None:
    """The methods' lines of one budget's column, both rows."""
    for i, method in enumerate(methods):
        sel = sorted((r for r in rows if r["budget"] == budget and r["method"] == method),
                     key=lambda r: r["first_layer"])
        text = [f"{method}, first drop layer {r['first_layer']}<br>" + (
            f"schedule {r['schedule']} (avg kept {100 * r['avg_kept_share']:.1f} %)<br>"
            f"accuracy {100 * r['accuracy']:.1f} %" if r["reachable"] else "budget unreachable here") for r in sel]
        for row, key, _ in SWEEP_ROWS:
            y = [None if r[key] is None else 100 * r[key] for r in sel]
            fig.add_trace(go.Scatter(x=[r["first_layer"] for r in sel], y=y, name=method, mode="lines+markers",
                                     legendgroup=method, showlegend=col == 1 and row == 1, text=text,
                                     connectgaps=False, hovertemplate="%{text}<br>" + ("relative" if row == 1
                                     else "recall") + " %{y:.1f} %<extra></extra>", **sweep_style(i, len(methods))),
                          row=row, col=col)


def sweep_chart(sweep: Mapping[str, Any]) -> go.Figure:
    """The drop-layer sweep (``python -m benchmarks.sweep``'s JSON): x = first drop layer, one line per
    method, one column per budget; top row accuracy relative to the unpruned model, bottom row the
    share of the question's object patches still alive right after the first drop. Panels of a row
    share one y-range; column titles are short (the rows are named on the y axes) so that nothing
    overlaps, even on a phone. Unreachable positions are gaps; hover shows each point's schedule."""
    rows = sweep["rows"]
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = make_subplots(rows=2, cols=len(budgets), shared_xaxes=True, vertical_spacing=0.08,
                        horizontal_spacing=0.06, subplot_titles=[f"budget {100 * b:.0f} %" for b in budgets])
    for col, budget in enumerate(budgets, start=1):
        _sweep_lines(fig, rows, budget, col, methods)
        fig.add_hline(y=100, line=dict(color="#bbbbbb", dash="dash"), row=1, col=col)
        out_of_reach = [r["first_layer"] for r in rows if r["budget"] == budget and not r["reachable"]]
        if out_of_reach:
            fig.add_vrect(x0=min(out_of_reach) - 0.5, x1=max(out_of_reach) + 0.5, fillcolor="#888888", opacity=0.12,
                          line_width=0, annotation_text="unreachable", annotation_position="top",
                          annotation_font_size=10, row="all", col=col)
    layers = [r["first_layer"] for r in rows]
    top = max([100 * r["relative"] for r in rows if r.get("relative") is not None] + [100.0])
    fig.update_xaxes(range=[min(layers) - 0.5, max(layers) + 0.5], dtick=1)
    fig.update_xaxes(title_text="first drop layer", row=2)
    for row, _, label in SWEEP_ROWS:  # one y-range per row, so that the budgets compare by eye
        fig.update_yaxes(range=[0, 105 if row == 2 else max(105.0, top + 5)], row=row)
        fig.update_yaxes(title_text=label, row=row, col=1)
    fig.update_annotations(font_size=13)
    unpruned = sweep.get("unpruned", {}).get("accuracy")
    model = str(sweep.get("model", "model")).rstrip("/").split("/")[-1]
    title = (f"Drop-layer sweep: {model}<br><sup>{sweep.get('n', '?')} questions"
             + (f" · unpruned {100 * unpruned:.1f} %" if unpruned is not None else "")
             + "<br>budget: vision tokens kept, layer average</sup>")
    _layout(fig, title, 680)
    return fig.update_layout(margin=dict(l=60, r=15, t=125, b=110), legend=dict(orientation="h", y=-0.12, x=0,
                             yanchor="top", font_size=12))
