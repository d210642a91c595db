"""V²Drop and its baselines as an lmms-eval model (optional: ``pip install "v2drop[eval]"``).

lmms-eval finds the model through the ``lmms_eval.models`` entry point that ``pyproject.toml``
declares; :func:`manifest` is that entry point. It names the class by its import path, so
lmms-eval imports :mod:`v2drop.lmms.model` (and lmms-eval's own modules) only when a run asks
for ``--model v2drop``. See docs/lmms-eval.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODEL_NAME", "MODEL_CLASS", "manifest"]

MODEL_NAME = "v2drop"
MODEL_CLASS = "v2drop.lmms.model.V2DropLMM"


def manifest() -> Any:
    """The ``ModelManifest`` that registers ``--model v2drop`` with lmms-eval's model registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS)
