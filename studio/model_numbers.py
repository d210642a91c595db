"""The measured numbers of an embedded model, read from its folder for *How it works*: the
per-layer variation of object and background patches (``report.json``, ``python -m shapes.report``)
and the drop-layer sweep (``sweep.json``, ``python -m benchmarks.sweep``; used only when measured
on the folder's weights, :func:`studio.traps.load_sweep`). A file that is missing or unreadable
becomes a sentence that says so and how to make it; nothing here raises for a model's files."""

from __future__ import annotations

import json
from pathlib import Path

from shapes.embedded import EmbeddedModel
from studio.traps import load_sweep
from visualize.two_models import ModelNumbers

__all__ = ["REPORT_FILE", "load_variation", "numbers_of"]

REPORT_FILE = "report.json"


def load_variation(model_dir: str | Path) -> list[dict] | None:
    """``report.json``'s ``variation`` rows (layer, object, background, object_in_top_half), or None
    when the file is missing, unreadable or has no such rows."""
    try:
        rows = json.loads((Path(model_dir) / REPORT_FILE).read_text()).get("variation")
    except (OSError, ValueError, AttributeError):
        return None
    keys = {"layer", "object", "background", "object_in_top_half"}
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and keys <= set(r) for r in rows):
        return None
    return rows


def numbers_of(spec: EmbeddedModel, model_dir: str | Path, sweep: dict | None = None) -> ModelNumbers:
    """``spec``'s numbers from ``model_dir`` (``sweep``: one already loaded, e.g. the page's cached one).
    The sentences name the shipped folder (``assets/<name>``), never the server's path."""
    variation = load_variation(model_dir)
    sweep = sweep if sweep is not None else load_sweep(model_dir)
    where = f"assets/{spec.name}"
    missing = []
    if variation is None:
        missing.append(f"No per-layer variation yet: {where}/{REPORT_FILE} is missing "
                       f"(python -m shapes.report --model {where} --out {where}/{REPORT_FILE}).")
    if sweep is None:
        missing.append(f"No drop-layer sweep measured on these weights: {where}/sweep.json is missing or was "
                       f"measured on other weights (python -m benchmarks.sweep --model {where} "
                       f"--out {where}/sweep.json).")
    return ModelNumbers(f"{spec.name} ({spec.short})", variation, sweep, tuple(missing))
