"""Every place where v2drop touches transformers internals, in one module.

The engine hooks the decoder layers of a stock model and edits the keyword arguments the
decoder loop passes to each layer. Those names and the cache API move between transformers
releases, so they are read here and checked against the range this project was tested on.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import transformers
from packaging.version import Version

__all__ = [
    "TESTED_TRANSFORMERS", "check_transformers_version", "cache_from_kwargs", "past_length",
    "cached_length", "kv_cache_bytes",
]

# The range whose decoder loop, mask builder and cache layout the test suite covers.
TESTED_TRANSFORMERS = (Version("5.24.0"), Version("5.25.0"))
ALLOW_UNTESTED_ENV = "V2DROP_ALLOW_UNTESTED_TRANSFORMERS"

CACHE_KWARGS = ("cache", "past_key_values")  # 5.24 renamed past_key_values -> cache


def check_transformers_version(version: str | None = None) -> None:
    """Refuse to patch a model on an untested transformers release, where the decoder loop may
    pass different arguments and pruning could silently give wrong answers. Set the environment
    variable ``V2DROP_ALLOW_UNTESTED_TRANSFORMERS=1`` to try anyway (the structural checks in the
    engine still run)."""
    found = Version(version or transformers.__version__)
    low, high = TESTED_TRANSFORMERS
    if low <= found < high or os.environ.get(ALLOW_UNTESTED_ENV) == "1":
        return
    raise RuntimeError(
        f"v2drop was tested with transformers >={low},<{high}, but {found} is installed. Its decoder "
        f"internals may differ, which could make token dropping silently wrong. Install a tested "
        f"version (pip install 'transformers>={low},<{high}') or set {ALLOW_UNTESTED_ENV}=1 to try anyway."
    )


def check_layer_kwargs(kwargs: dict[str, Any]) -> None:
    """Fail loudly if the decoder loop no longer passes what the engine slices."""
    if "position_embeddings" not in kwargs or "attention_mask" not in kwargs:
        raise RuntimeError(
            "the decoder layers of this model are not called with 'position_embeddings' and "
            "'attention_mask' keyword arguments, which v2drop needs to drop tokens safely; this "
            f"transformers version ({transformers.__version__}) or model is not supported"
        )


def cache_from_kwargs(kwargs: dict[str, Any]) -> Any | None:
    for name in CACHE_KWARGS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def past_length(cache: Any | None) -> int:
    """Tokens already seen by the sequence = layer 0's cache length (layer 0 never drops)."""
    if cache is None:
        return 0
    return int(cache.get_seq_length())


def cached_length(cache: Any | None, layer_idx: int) -> int:
    """Tokens held by one layer's cache (layers hold different lengths after dropping)."""
    if cache is None or len(getattr(cache, "layers", [])) <= layer_idx:
        return 0
    layer = cache.layers[layer_idx]
    return int(type(layer).get_seq_length(layer))  # the class's count, not a report_full_length override


def report_full_length(cache: Any, layer_idx: int, dropped: int) -> None:
    """Make one cache layer report ``dropped`` more tokens than it holds (instance override of
    ``get_seq_length``), for a layer whose prompt tokens were dropped before it ran: transformers
    reads the sequence length (positions, mask sizes) from layer 0's cache."""
    layer = cache.layers[layer_idx]
    own = type(layer).get_seq_length
    layer.get_seq_length = lambda: own(layer) + dropped


def kv_cache_bytes(cache: Any | None) -> int | None:
    """Bytes held by the keys and values of every layer of a (dynamic) cache."""
    if cache is None or not hasattr(cache, "layers"):
        return None
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def uses_sliding_window(text_config: Any) -> bool:
    return "sliding_attention" in (getattr(text_config, "layer_types", None) or [])


def detects_packing_from_positions(text_config: Any) -> bool:
    """FlashAttention kernels treat non-contiguous position ids (as left by dropping) as packed
    sequences; see ``_is_packed_sequence`` in modeling_flash_attention_utils."""
    return "flash" in str(getattr(text_config, "_attn_implementation", "") or "")
