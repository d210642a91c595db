"""Baseline scoring rules: the right tokens on rigged cases, agreement with the model's own
attention weights, and the engine invariants (keep-all exactness, cache = no cache)."""

import pytest
import torch

import tiny_models as tm
import v2drop
from v2drop import DropSchedule, ScoreContext, baselines  # noqa: F401  (registers the rules)

GEN = dict(max_new_tokens=4, do_sample=False)
ATTENTION_RULES = ("fastv", "fastv-lite", "pdrop")
POSITION_FREE = ("v2drop", "random", "uniform", "downsample")   # never look past the vision block
ALL = ATTENTION_RULES + POSITION_FREE


def schedule_for(method: str, keep: float = 0.5) -> str:
    return f"0:{keep}" if method == "downsample" else f"2:{keep},4:{keep}"


# ----------------------------------------------------------------------------- rigged attention
def rigged_layer():
    """A Qwen2 decoder layer whose last-token query is (1,1,1,1) and whose keys are the first
    4 features of the normalised input: tokens built like (5,5,5,5,0,...) are attended most."""
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    config = Qwen2Config(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1,
                         num_hidden_layers=1, vocab_size=10)
    config._attn_implementation = "eager"
    layer = Qwen2DecoderLayer(config, 0)
    with torch.no_grad():
        attn = layer.self_attn
        attn.q_proj.weight.zero_(); attn.q_proj.bias.fill_(1.0)
        attn.k_proj.weight.zero_(); attn.k_proj.bias.zero_()
        attn.k_proj.weight[:, :4] = torch.eye(4)
    return layer


def rigged_context(favoured=(1, 4), mask=None, layer_idx=2):
    length, start, n = 10, 2, 6                  # text 0-1, vision 2-7, text 8-9
    hidden = torch.full((1, length, 8), 0.0)
    hidden[0, :, :4] = -1.0
    hidden[0, :, 4:] = 1.0
    for f in favoured:
        hidden[0, start + f] = torch.tensor([5.0] * 4 + [0.0] * 4)
    layer = rigged_layer()
    pe = (torch.ones(1, length, 4), torch.zeros(1, length, 4))   # no rotation: pure content match
    index = torch.arange(start, start + n).unsqueeze(0)
    return ScoreContext(layer_idx=layer_idx, hidden=hidden, previous_hidden=hidden, vision_index=index,
                        vision_ordinal=torch.arange(n).unsqueeze(0), keep_count=2, layer=layer,
                        previous_layer=layer, position_embeddings=pe, attention_mask=mask,
                        generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ATTENTION_RULES)
def test_attention_rules_keep_the_attended_tokens(method):
    ctx = rigged_context()
    scores = v2drop.get_method(method).score(ctx)
    assert sorted(scores[0].topk(2).indices.tolist()) == [1, 4]


@pytest.mark.parametrize("kind", ["bool4d", "float4d", "2d"])
def test_attention_rules_respect_padding(kind):
    """A masked (padding) key must get no attention, even when its content would win."""
    length = 10
    keep = torch.ones(length, dtype=torch.bool)
    keep[2 + 4] = False                                            # hide favoured vision token 4
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    if kind == "bool4d":
        mask = (causal & keep).view(1, 1, length, length)
    elif kind == "float4d":
        mask = torch.zeros(1, 1, length, length).masked_fill(~(causal & keep), torch.finfo(torch.float32).min)
    else:
        mask = keep.long().view(1, length)
    for method in ATTENTION_RULES:
        scores = v2drop.get_method(method).score(rigged_context(mask=mask))
        assert scores[0, 4] == 0 and scores[0].argmax() == 1, method


def test_fastv_full_and_lite_agree_and_full_costs_more():
    ctx = rigged_context()
    full, lite = v2drop.get_method("fastv"), v2drop.get_method("fastv-lite")
    a, b = full.score(ctx), lite.score(rigged_context())
    torch.testing.assert_close(a, b)
    full.materialised_bytes = lite.materialised_bytes = 0
    full.score(ctx)
    lite.score(rigged_context())
    assert full.materialised_bytes == 10 * lite.materialised_bytes   # L×L against one row (L = 10)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_attention_scores_match_the_models_attention_weights(tiny, family):
    """fastv at layer 2 reads layer 1's attention row of the last token, pdrop layer 2's own:
    compare with the eager model's ``output_attentions`` on a left-padded batch (RoPE / M-RoPE,
    GQA and the padding mask all matter here)."""
    model, processor = tiny(family, "eager")
    inputs = tm.inputs(processor, [tm.image(1), tm.image(2)], ["what is in the image ?", "how many red shape are there ? yes"])
    assert (inputs["attention_mask"] == 0).any()
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    for method, source in (("fastv", 1), ("fastv-lite", 1), ("pdrop", 2)):
        with v2drop.apply(model, "2:0.5", method=method) as run, torch.no_grad():
            model(**inputs)
        for b, sample in enumerate(run.trace.samples):
            expected = attentions[source][b, :, -1, sample.vision_positions].mean(0)
            got = torch.tensor(sample.scores[2]["score"])
            torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-4, msg=f"{method} sample {b}")


# ----------------------------------------------------------------------------- simple rules
def plain_context(n=16, keep=4, layer_idx=0, dim=3, seed=0):
    torch.manual_seed(seed)
    hidden = torch.randn(1, n + 2, dim)
    return ScoreContext(layer_idx=layer_idx, hidden=hidden, previous_hidden=None,
                        vision_index=torch.arange(1, n + 1).unsqueeze(0), vision_ordinal=torch.arange(n).unsqueeze(0),
                        keep_count=keep, generator=torch.Generator().manual_seed(seed))


def test_random_is_seeded():
    rule = v2drop.get_method("random")
    a, b, c = (rule.score(plain_context(seed=s)) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_uniform_keeps_evenly_spaced_tokens():
    scores = v2drop.get_method("uniform").score(plain_context(n=16, keep=4))
    assert sorted(scores[0].topk(4).indices.tolist()) == [2, 6, 10, 14]


def test_downsample_pools_square_windows():
    """16 tokens = a 4×4 grid, keep 4: one token per 2×2 window, holding the window's mean."""
    rule = v2drop.get_method("downsample")
    ctx = plain_context(n=16, keep=4)
    chosen = rule.score(ctx).topk(4).indices.sort().values.view(1, -1)
    assert chosen[0].tolist() == [5, 7, 13, 15]                  # centres (1,1) (1,3) (3,1) (3,3)
    merged = rule.merge(ctx, chosen)
    grid = ctx.hidden[0, 1:17].view(4, 4, -1)
    expected = grid.view(2, 2, 2, 2, -1).permute(0, 2, 1, 3, 4).reshape(4, 4, -1).mean(1)  # 2×2 block means
    torch.testing.assert_close(merged[0, 1 + chosen[0]], expected)
    assert torch.equal(merged[0, 0], ctx.hidden[0, 0]) and torch.equal(merged[0, -1], ctx.hidden[0, -1])


def test_downsample_non_square_uses_1d_windows():
    rule = v2drop.get_method("downsample")
    ctx = plain_context(n=12, keep=3)
    chosen = rule.score(ctx).topk(3).indices.sort().values.view(1, -1)
    merged = rule.merge(ctx, chosen)
    expected = ctx.hidden[0, 1:13].view(3, 4, -1).mean(1)
    torch.testing.assert_close(merged[0, 1 + chosen[0]], expected)


def test_every_baseline_is_registered_and_documented():
    names = v2drop.available_methods()
    for name in ("fastv", "fastv-lite", "pdrop", "random", "uniform", "downsample"):
        assert name in names
        assert len(v2drop.get_method(name).description) > 20


# ----------------------------------------------------------------------------- engine invariants
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_keep_all_is_exact_for_every_method(tiny, family):
    model, processor = tiny(family, "sdpa")
    inputs = tm.inputs(processor, [tm.image(1), tm.image(2)], ["what is in the image ?", "how many red shape"])
    ref = model.generate(**inputs, **GEN)
    for method in ALL:
        with v2drop.apply(model, schedule_for(method, 1.0), method=method):
            out = model.generate(**inputs, **GEN)
        assert torch.equal(out, ref), method


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cache_equals_no_cache(tiny, attn):
    """Rules that look only at the vision block pick the same tokens with and without a cache.
    Attention rules query the last token of the current input, which is the latest generated
    token when generating without a cache: only their first step is comparable."""
    model, processor = tiny("llava", attn)
    inputs = tm.inputs(processor, [tm.image(1), tm.image(2)], ["what is in the image ?", "how many red shape"])
    prompt = inputs["input_ids"].shape[1]
    methods = ALL if attn == "sdpa" else ("fastv", "pdrop", "downsample")  # eager: the 4-D float-mask paths
    for method in methods:
        with v2drop.apply(model, schedule_for(method), method=method) as run:
            cached = model.generate(**inputs, use_cache=True, **GEN)
            alive = run.trace.samples[0].alive_per_layer
            uncached = model.generate(**inputs, use_cache=False, **GEN)
        if method in POSITION_FREE:
            assert torch.equal(cached, uncached), method
        else:
            assert torch.equal(cached[:, : prompt + 1], uncached[:, : prompt + 1]), method
        n = run.trace.samples[0].num_vision_tokens
        assert alive == DropSchedule.parse(schedule_for(method)).alive_per_layer(6, n), method


def test_layer_zero_pooling_keeps_positions_of_new_tokens(tiny):
    """After a drop before layer 0, decoding must continue from the unpruned prompt length:
    layer 0's cache is shorter but reports every token the sequence has seen."""
    model, processor = tiny("llava", "eager")
    inputs = tm.inputs(processor, [tm.image(1)], ["what is in the image ?"])
    prompt = inputs["input_ids"].shape[1]
    seen = []
    layer = model.model.language_model.layers[3]

    def grab(module, args, kwargs):
        seen.append(kwargs["position_ids"].flatten().tolist())

    with v2drop.apply(model, "0:0.25", method="downsample") as run:
        handle = layer.register_forward_pre_hook(grab, with_kwargs=True)   # runs after the engine's hook
        try:
            model.generate(**inputs, **GEN)
        finally:
            handle.remove()
    sample = run.trace.samples[0]
    assert sample.alive_per_layer == [sample.num_vision_tokens // 4] * 6
    assert len(seen[0]) == prompt - sample.num_vision_tokens * 3 // 4     # pooled prompt, original ids
    assert seen[0][-1] == prompt - 1
    assert [s[0] for s in seen[1:]] == list(range(prompt, prompt + GEN["max_new_tokens"] - 1))
