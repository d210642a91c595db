"""Labels that warn: a preset whose first drop falls where the model's measured drop-layer sweep
shows a trap carries the measured number, e.g. "first drop at layer 2: 47 % of unpruned accuracy
on this model".

The sweep is ``benchmarks.sweep``'s JSON (the embedded model's: ``assets/shapes-llava/sweep.json``).
It is used only for the weights it was measured on (its ``weights_sha256``). A position is a
trap when V²Drop's accuracy there, relative to the unpruned model, is below random dropping's at
the same first layer and budget: a rule that knows which tokens matter does worse than one that
does not look. A preset is matched to the sweep's row at its first drop layer and the sweep
budget nearest its own layer-averaged budget (within :data:`BUDGET_TOLERANCE`); no number is
written by hand, and no preset is changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from v2drop.schedule import DropSchedule

__all__ = ["Trap", "load_sweep", "trap_at", "preset_warning", "BUDGET_TOLERANCE", "SWEEP_FILE"]

SWEEP_FILE = "sweep.json"
BUDGET_TOLERANCE = 0.1   # a preset's budget may differ this much from the sweep's and still match it


@dataclass(frozen=True)
class Trap:
    """A measured position where V²Drop does worse than random dropping."""

    first_layer: int
    budget: float
    relative: float          # V²Drop's accuracy / unpruned
    random_relative: float   # random dropping's at the same position

    def label(self) -> str:
        return (f"⚠️ first drop at layer {self.first_layer}: {100 * self.relative:.0f} % of unpruned accuracy on "
                f"this model (random dropping: {100 * self.random_relative:.0f} %)")


def load_sweep(model_dir: str | Path) -> dict | None:
    """The sweep measured on the weights in ``model_dir`` (``model.safetensors``), or None when
    there is none or it was measured on other weights."""
    folder = Path(model_dir)
    try:
        sweep = json.loads((folder / SWEEP_FILE).read_text())
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    except (OSError, ValueError):
        return None
    return sweep if sweep.get("weights_sha256") == digest else None


def _relative(sweep: dict, method: str, first_layer: int, budget: float) -> float | None:
    row = next((r for r in sweep.get("rows", []) if r.get("method") == method and r.get("first_layer") == first_layer
                and r.get("budget") == budget and r.get("reachable")), None)
    return None if row is None else row.get("relative")


def trap_at(sweep: dict | None, schedule: DropSchedule, num_layers: int) -> Trap | None:
    """The trap ``schedule``'s first drop falls into on the model of ``sweep``, or None."""
    if not sweep or not schedule.stages or sweep.get("num_layers") != num_layers:
        return None
    n = int(sweep.get("num_vision_tokens") or 0)
    if n <= 0:
        return None
    share = schedule.average_kept(num_layers, n) / n
    first = schedule.layers[0]
    budgets = sorted({r["budget"] for r in sweep.get("rows", []) if r.get("first_layer") == first},
                     key=lambda b: abs(b - share))
    for budget in budgets[:1]:
        if abs(budget - share) > BUDGET_TOLERANCE:
            return None
        v2, rnd = _relative(sweep, "v2drop", first, budget), _relative(sweep, "random", first, budget)
        if v2 is not None and rnd is not None and v2 < rnd:
            return Trap(first, budget, v2, rnd)
    return None


def preset_warning(sweep: dict | None, text: str, num_layers: int) -> str:
    """The warning for a preset's schedule text ("" when none, or when it does not parse)."""
    try:
        trap = trap_at(sweep, DropSchedule.parse(text), num_layers)
    except ValueError:
        return ""
    return trap.label() if trap else ""
