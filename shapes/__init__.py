"""Shapes: the embedded default vision-language model of V²Drop Studio.

A small LLaVA (SigLIP tower + Qwen2 decoder) trained from scratch on procedurally
generated scenes (see ``scenes.py``), shipped in ``assets/shapes-llava/``.

Submodules (imported lazily so importing ``shapes`` stays cheap):

* ``shapes.scenes``   - deterministic scene / question generator and benchmark
* ``shapes.model``    - config, tokenizer/processor builders, ``load_default``
* ``shapes.train``    - ``python -m shapes.train`` reproduces the weights
* ``shapes.evaluate`` - ``python -m shapes.evaluate`` accuracy tables
"""

from __future__ import annotations

import importlib

__all__ = ["scenes", "model", "train", "evaluate", "load_default", "benchmark", "DEFAULT_MODEL_DIR"]


def __getattr__(name):
    if name in ("scenes", "model", "train", "evaluate"):
        return importlib.import_module(f"{__name__}.{name}")
    if name in ("load_default", "DEFAULT_MODEL_DIR"):
        return getattr(importlib.import_module(f"{__name__}.model"), name)
    if name == "benchmark":
        return importlib.import_module(f"{__name__}.scenes").benchmark
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
