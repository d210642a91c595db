"""v2drop.encoder_cache: one vision-tower pass for two prompts on the same pixels, same outputs,
and the app's pair stream uses it while charging each answer its full prefill."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import checkpoints
from studio.inputs import build_inputs
from studio.pair import stream_pair
from v2drop.encoder_cache import shared_encoder_outputs


def _photo(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8))


def _tower(model):
    inner = model.model
    return getattr(inner, "visual", None) or inner.vision_tower


@pytest.mark.parametrize("name", ["llava-onevision-0.5b", "qwen2-vl-2b"])
def test_equal_pixels_run_the_tower_once_with_equal_outputs(name):
    model, processor = checkpoints.build(name)
    calls = []
    handle = _tower(model).register_forward_hook(lambda *_: calls.append(1))
    short = build_inputs(processor, [], "what ?", _photo(0))
    long = build_inputs(processor, [("what is it ?", "a cat")], "describe it in detail ?", _photo(0))
    other = build_inputs(processor, [], "what ?", _photo(1))
    with torch.no_grad():
        reference = [model(**inputs).logits for inputs in (short, long, other)]
        calls.clear()
        with shared_encoder_outputs(model) as memos:
            shared = [model(**inputs).logits for inputs in (short, long, other)]
    handle.remove()
    assert len(calls) == 2                       # short and long share one pass; other pixels run again
    assert memos["get_image_features"].hits == 1 and memos["get_image_features"].saved_seconds > 0
    for ref, got in zip(reference, shared):
        assert torch.equal(ref, got)
    assert "get_image_features" not in vars(model.model)   # the class's method is back


def test_pair_stream_shares_the_tower_and_charges_both_answers():
    model, processor = checkpoints.build("llava-onevision-0.5b")
    calls = []
    handle = _tower(model).register_forward_hook(lambda *_: calls.append(1))
    events = list(stream_pair(model, processor, _photo(0), "what ?", [], [], "1:0.5,2:0.3", max_new_tokens=2,
                              trace_all_layers=False))
    handle.remove()
    assert len(calls) == 1
    last = events[-1]
    assert last.full_done and last.drop_done and last.drop.prefill_seconds > 0 and last.full.prefill_seconds > 0
    assert "get_image_features" not in vars(model.model)
