"""v2drop: variation-aware vision-token dropping (V²Drop) for stock transformers 5.x LVLMs.

    import v2drop
    schedule = v2drop.DropSchedule.preset("llava-1.5-192")      # or .parse("3:0.5,17:0.3,22:0")
    with v2drop.apply(model, schedule) as run:                  # hooks in, hooks out
        ids = model.generate(**inputs, max_new_tokens=32)
    run.trace.to_dict()                                         # kept tokens, scores, timings, memory
"""

from .adapters import UnsupportedModelError, get_adapter, supported_architectures
from .engine import DropSession, apply
from .schedule import PRESETS, DropSchedule, prefill_flops
from .scoring import ScoreContext, available_methods, get_method, register_method, variation
from .trace import PatchLayout, SampleTrace, Trace

__all__ = [
    "DropSchedule", "PRESETS", "prefill_flops", "apply", "DropSession", "Trace", "SampleTrace", "PatchLayout",
    "ScoreContext", "register_method", "get_method", "available_methods", "variation",
    "supported_architectures", "get_adapter", "UnsupportedModelError",
]
__version__ = "0.2.0"  # keep equal to pyproject.toml (tests/test_packaging.py)
