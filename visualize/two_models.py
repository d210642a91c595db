"""Two embedded models side by side: where each one's object patches are lazy or active, and what
that does to V²Drop against random dropping at the same budget. Usable from a notebook::

    import json
    from visualize.two_models import ModelNumbers, comparison_figure, comparison_story
    a = ModelNumbers("aids", json.load(open("assets/shapes-llava/report.json"))["variation"],
                     json.load(open("assets/shapes-llava/sweep.json")))
    comparison_figure([a, b]).show(); print(comparison_story([a, b]))

Per model, one panel over the decoder layers: bars, the share of object patches that rank in the top
half of V²Drop's variation score at that layer (``shapes.report``'s ``variation`` rows; a keep-half
step there keeps that share), red where the object patches are *lazy* (their mean variation below
the background's and fewer than half in the top half), green where they are *active*; lines, at
the sweep's budget (``benchmarks.sweep``), V²Drop's and random dropping's accuracy relative to the
unpruned model and their share of the object patches still alive right after the first drop, with
the first drop at that layer. A model without its numbers gets a panel that says what is missing.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["ModelNumbers", "is_lazy", "sweep_rows", "comparison_figure", "comparison_story", "BUDGET"]

BUDGET = 0.5   # the sweep budget compared (half of the vision tokens on layer average)
LAZY, ACTIVE = "#e4572e", "#3a9d5d"
LINES = {  # (method, sweep key): name, colour, dash
    ("v2drop", "relative"): ("V²Drop accuracy, % of unpruned", "#b5179e", "solid"),
    ("random", "relative"): ("random accuracy, % of unpruned", "#2f6db5", "solid"),
    ("v2drop", "recall_at_first_drop"): ("V²Drop: object patches alive, %", "#b5179e", "dot"),
    ("random", "recall_at_first_drop"): ("random: object patches alive, %", "#2f6db5", "dot"),
}


@dataclass(frozen=True)
class ModelNumbers:
    """One model's numbers: its title, ``report.json``'s ``variation`` rows and its sweep (``None``
    when missing); ``missing`` says in words what is missing and how to make it."""

    title: str
    variation: Sequence[Mapping[str, Any]] | None
    sweep: Mapping[str, Any] | None
    missing: tuple[str, ...] = field(default=())


def is_lazy(row: Mapping[str, Any]) -> bool:
    """Object patches lazy at this layer: less variation than the background, and fewer than half
    of them in the top half of their image."""
    return row["object"] < row["background"] and row["object_in_top_half"] < 0.5


def sweep_rows(sweep: Mapping[str, Any] | None, budget: float = BUDGET) -> dict[int, dict[str, Mapping[str, Any]]]:
    """The sweep's reachable rows at ``budget``: first drop layer -> method -> row."""
    out: dict[int, dict[str, Mapping[str, Any]]] = {}
    for row in (sweep or {}).get("rows", []):
        if row.get("reachable") and abs(row.get("budget", -1) - budget) < 1e-3:
            out.setdefault(int(row["first_layer"]), {})[row["method"]] = row
    return out


def _bars(fig: go.Figure, variation: Sequence[Mapping[str, Any]], col: int) -> None:
    rows = sorted(variation, key=lambda r: r["layer"])
    fig.add_trace(go.Bar(
        x=[r["layer"] for r in rows], y=[100 * r["object_in_top_half"] for r in rows],
        marker_color=[LAZY if is_lazy(r) else ACTIVE for r in rows], opacity=0.45,
        name="object patches in the top half, %<br>(red: lazy, green: active)", legendgroup="bars",
        showlegend=col == 1, customdata=[[r["object"], r["background"]] for r in rows],
        hovertemplate="layer %{x}: %{y:.0f} % of the object patches in the top half<br>mean variation: "
                      "object %{customdata[0]:.1f}, background %{customdata[1]:.1f}<extra></extra>"), row=1, col=col)


def _lines(fig: go.Figure, sweep: Mapping[str, Any], col: int, budget: float) -> None:
    rows = sweep_rows(sweep, budget)
    layers = sorted(rows)
    for (method, key), (name, colour, dash) in LINES.items():
        here = [layer for layer in layers if method in rows[layer] and rows[layer][method].get(key) is not None]
        fig.add_trace(go.Scatter(
            x=here, y=[100 * rows[layer][method][key] for layer in here], name=name, legendgroup=name,
            showlegend=col == 1, mode="lines+markers", line=dict(color=colour, dash=dash, width=2.5),
            hovertemplate=f"{name}, first drop at layer %{{x}}: %{{y:.0f}} %<extra></extra>"), row=1, col=col)


def _wrap(text: str, width: int = 44) -> str:
    """``text`` in lines of at most ``width`` characters for a panel (paths and commands kept whole)."""
    return "<br>".join(textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False))


def comparison_figure(models: Sequence[ModelNumbers], budget: float = BUDGET) -> go.Figure:
    """One panel per model (see the module docstring), on one y range so that they compare by eye."""
    titles = [_panel_title(m.title) for m in models]
    fig = make_subplots(rows=1, cols=max(1, len(models)), shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=titles or ["no model"])
    for col, model in enumerate(models, start=1):
        if model.variation:
            _bars(fig, model.variation, col)
        if model.sweep:
            _lines(fig, model.sweep, col, budget)
        if model.missing:
            fig.add_annotation(text="<br>".join(_wrap(m) for m in model.missing), yref="y domain",
                               xref=f"x{col} domain" if col > 1 else "x domain", x=0.5, y=0.5, showarrow=False, font=dict(size=12, color="#a33"),
                               bgcolor="rgba(255,255,255,0.85)")
        fig.add_hline(y=50, line=dict(color="#bbbbbb", dash="dash"), row=1, col=col)
    fig.update_xaxes(title_text="decoder layer", dtick=1)
    fig.update_yaxes(range=[0, 110], title_text="%", row=1, col=1)
    fig.update_annotations(font_size=12)
    fig.update_layout(title=dict(text=f"Lazy object patches, V²Drop vs random<br><sup>budget {100 * budget:.0f} "
                                      "% of the vision tokens on layer average;<br>a layer is also the first drop "
                                      "layer of the lines</sup>", x=0.01, font_size=16),
                      height=560, template="plotly_white", barmode="overlay", margin=dict(l=45, r=10, t=150, b=60),
                      legend=dict(orientation="h", y=-0.18, x=0, yanchor="top", font_size=11))
    return fig


def _panel_title(title: str) -> str:
    """"shapes-llava (trained with training aids)" -> the name, then "(with training aids)" below it:
    two panels side by side fit a phone's width."""
    name, _, how = title.partition(" (")
    return f"{name}<br>({how.removeprefix('trained ')}" if how else name


def _variation_sentence(variation: Sequence[Mapping[str, Any]]) -> str:
    rows = sorted(variation, key=lambda r: r["layer"])
    lazy = [r for r in rows if is_lazy(r)]
    if not lazy:
        return "its object patches are active at every layer (never lazier than the background)"
    worst = min(lazy, key=lambda r: r["object_in_top_half"])
    return (f"its object patches are lazy at layer{'s' if len(lazy) > 1 else ''} "
            f"{', '.join(str(r['layer']) for r in lazy)} (laziest at layer {worst['layer']}: "
            f"{100 * worst['object_in_top_half']:.0f} % of them in the top half, mean variation "
            f"{worst['object']:.1f} against the background's {worst['background']:.1f})")


def _compared(sweep: Mapping[str, Any] | None, budget: float) -> tuple[dict, list[int], list[int]]:
    """(rows by layer, first layers with both V²Drop and random, those where V²Drop's accuracy is lower)."""
    rows = sweep_rows(sweep, budget)
    both = [layer for layer in sorted(rows) if {"v2drop", "random"} <= set(rows[layer])]
    worse = [layer for layer in both if rows[layer]["v2drop"]["relative"] < rows[layer]["random"]["relative"]]
    return rows, both, worse


def _percent(row: Mapping[str, Any], key: str) -> str:
    return "?" if row.get(key) is None else f"{100 * row[key]:.0f} %"


def _sweep_sentence(sweep: Mapping[str, Any], budget: float) -> str:
    rows, both, worse = _compared(sweep, budget)
    if not both:
        return f"its sweep has no V²Drop and random rows at budget {100 * budget:.0f} %"
    parts = [f"layer {layer}: accuracy {_percent(rows[layer]['v2drop'], 'relative')} vs "
             f"{_percent(rows[layer]['random'], 'relative')}, object patches alive "
             f"{_percent(rows[layer]['v2drop'], 'recall_at_first_drop')} vs "
             f"{_percent(rows[layer]['random'], 'recall_at_first_drop')}" for layer in both]
    verdict = (f"V²Drop does worse than random with the first drop at layer{'s' if len(worse) > 1 else ''} "
               f"{', '.join(map(str, worse))}" if worse else "V²Drop matches or beats random at every first layer")
    return (f"at {100 * budget:.0f} % of the tokens, V²Drop vs random (accuracy as a share of unpruned), first "
            "drop at " + "; ".join(parts) + f": {verdict}")


def _overlap(model: ModelNumbers, budget: float) -> str:
    """The first drop layers where the object patches are lazy and V²Drop loses to random."""
    _, both, worse = _compared(model.sweep, budget)
    lazy = [r["layer"] for r in model.variation or [] if is_lazy(r) and r["layer"] in both]
    if not both or not model.variation:
        return ""
    hit = [layer for layer in lazy if layer in worse]
    if not lazy:
        return " No first drop layer of the sweep falls where its object patches are lazy."
    return (f" Of the first drop layers where its object patches are lazy ({', '.join(map(str, lazy))}), V²Drop "
            f"loses to random at {', '.join(map(str, hit)) if hit else 'none'}.")


def comparison_story(models: Sequence[ModelNumbers], budget: float = BUDGET) -> str:
    """One short paragraph per model, every number taken from its files."""
    lines = ["**Two embedded models, two patterns.** Both models have the same architecture and see the same "
             "scenes; they were trained differently. For each, where its object patches are *lazy* (they vary "
             "less than the background, so V²Drop drops them first) and what that does to V²Drop against random "
             "dropping at the same budget:"]
    for model in models:
        parts = []
        if model.variation:
            parts.append(_variation_sentence(model.variation))
        if model.sweep:
            parts.append(_sweep_sentence(model.sweep, budget))
        text = "; ".join(parts) + "." if parts else ""
        text += _overlap(model, budget)
        if model.missing:
            text += (" " if text else "") + " ".join(model.missing)
        lines.append(f"- **{model.title}**: {text.strip()}")
    return "\n".join(lines)
