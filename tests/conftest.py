"""Shared fixtures. The hub is offline for every test (set before transformers is imported)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

import tiny_models  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

_BUILT: dict = {}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``tiny(family, attn)`` -> (model, processor), built once per session."""

    def get(family: str, attn: str = "sdpa"):
        key = (family, attn)
        if key not in _BUILT:
            _BUILT[key] = tiny_models.build(family, tmp_path_factory.mktemp(f"{family}-{attn}"), attn=attn)
        return _BUILT[key]

    return get
