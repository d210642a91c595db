"""The one-click drop-layer sweep of one question (``studio.layer_sweep.LayerSweep.to_dict()``) as a
figure: per first drop layer and method, the share of the tokens that matter still alive right
after the first drop (y), and whether the answer was right (a filled circle) or wrong (an ✕). Without
known tokens the y axis is the answer's verdict itself (1 = right, 0 = wrong)."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go

__all__ = ["layer_sweep_chart", "SWEEP_COLOURS"]

SWEEP_COLOURS = {"v2drop": "#e4572e", "random": "#2f6db5", "uniform": "#3a9d5d"}
_LABELS = {"v2drop": "V²Drop", "random": "random", "uniform": "uniform"}
_OFFSET = {"v2drop": 0.0, "random": -0.08, "uniform": 0.08}   # side by side, so no line hides another


def layer_sweep_chart(sweep: Mapping[str, Any]) -> go.Figure | None:
    """The figure, or None when there is nothing to plot (no rows, or neither tokens nor truth known)."""
    rows = sweep.get("rows") or []
    by_tokens = bool(sweep.get("tokens"))
    if not rows or (not by_tokens and sweep.get("expected") is None):
        return None
    fig = go.Figure()
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        x = [r["first_layer"] + _OFFSET.get(method, 0.0) for r in mine]
        y = [r["alive_share"] if by_tokens else float(bool(r["right"])) for r in mine]
        symbols = ["circle" if r["right"] or r["right"] is None else "x" for r in mine]
        text = [f"{_LABELS.get(method, method)}, first drop at {r['first_layer']}: “{r['answer']}”"
                + ("" if r["right"] is None else (" right" if r["right"] else " wrong")) for r in mine]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=_LABELS.get(method, method),
                                 line=dict(color=SWEEP_COLOURS.get(method), width=2),
                                 marker=dict(symbol=symbols, size=12, line=dict(width=1, color="#222")),
                                 hovertext=text, hoverinfo="text"))
    layers = sorted({r["first_layer"] for r in rows})
    fig.update_layout(   # short title, legend above the plot: nothing to cut or overlap at 390 px
        title=dict(text=f"{100 * sweep['budget']:.0f} % budget · ● right · ✕ wrong", font=dict(size=13), x=0,
                   xanchor="left"),
        height=340, margin=dict(l=60, r=20, t=70, b=50),
        legend=dict(orientation="h", x=0, xanchor="left", y=1.02, yanchor="bottom"),
        xaxis=dict(title="first drop layer", tickvals=layers),
        yaxis=dict(title="object patches alive" if by_tokens else "answer right", range=[-0.05, 1.05],
                   tickformat=".0%" if by_tokens else None))
    return fig
