"""The FlashAttention code path without flash-attn: a stand-in kernel with FlashAttention's
contract (a 2-D padding mask or none, causal alignment to the bottom right, and packed-sequence
detection from position ids), registered under its own name (a name containing "flash" makes transformers load a hub kernel),
with v2drop told to treat it as FlashAttention."""

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
from transformers.modeling_flash_attention_utils import _is_packed_sequence

import tiny_models as tm
import v2drop

NAME = "fa_contract_sim"


def flash_like_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    batch, heads, q_len, _ = query.shape
    if _is_packed_sequence(kwargs.get("position_ids"), batch):
        raise AssertionError("position ids look packed: FlashAttention would split the sequence")
    k_len = key.shape[2]
    key = key.repeat_interleave(heads // key.shape[1], dim=1)
    value = value.repeat_interleave(heads // value.shape[1], dim=1)
    rows = torch.arange(q_len).unsqueeze(1) + (k_len - q_len)          # bottom-right causal alignment
    allowed = (torch.arange(k_len).unsqueeze(0) <= rows).expand(batch, 1, q_len, k_len)
    if attention_mask is not None:
        assert attention_mask.dim() == 2 and attention_mask.shape[-1] == k_len, attention_mask.shape
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    empty = ~allowed.any(-1, keepdim=True)                                # padded queries: output zeros
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed | empty,
                                                           scale=scaling)
    out = out.masked_fill(empty, 0.0)
    return out.transpose(1, 2).contiguous(), None


def test_flash_implementations_are_detected():
    from types import SimpleNamespace
    from v2drop import compat
    for impl, expected in (("flash_attention_2", True), ("flash_attention_3", True), ("sdpa", False), ("eager", False)):
        assert compat.detects_packing_from_positions(SimpleNamespace(_attn_implementation=impl)) is expected


@pytest.fixture(scope="module")
def flash_models(tmp_path_factory):
    AttentionInterface.register(NAME, flash_like_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    return {f: tm.build(f, tmp_path_factory.mktemp(f), attn=NAME) for f in ("llava", "qwen2_vl")}


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_flash_path_keep_all_and_cache(flash_models, family, monkeypatch):
    from v2drop import compat
    monkeypatch.setattr(compat, "detects_packing_from_positions", lambda config: True)
    model, processor = flash_models[family]
    assert model.config.text_config._attn_implementation == NAME
    inputs = tm.inputs(processor, [tm.image(1), tm.image(2)], ["what is in the image ?", "how many"])
    gen = dict(max_new_tokens=5, do_sample=False)
    ref = model.generate(**inputs, **gen)
    with v2drop.apply(model, v2drop.DropSchedule.keep_all([2, 4])):
        assert torch.equal(model.generate(**inputs, **gen), ref)
    single = tm.inputs(processor, [tm.image(1)], ["what is in the image ?"])  # unpadded: mask None
    with v2drop.apply(model, "2:0.5,4:0.25") as run:
        for case in (inputs, single):
            cached = model.generate(**case, use_cache=True, **gen)
            assert torch.equal(cached, model.generate(**case, use_cache=False, **gen))
    assert run.trace.samples[0].alive_per_layer[4] < run.trace.samples[0].num_vision_tokens
