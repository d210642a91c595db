"""The engine's must-hold properties, on tiny models of every supported family."""

import json

import pytest
import torch

import tiny_models as tm
import v2drop

FAMILIES = tm.FAMILIES
ATTNS = ("sdpa", "eager")
SCHEDULE = "2:0.5,4:0.25"           # 6-layer tiny models
GEN = dict(max_new_tokens=6, do_sample=False)


def batch(processor, seeds=(1, 2), questions=("what is in the image ?", "how many")):
    return tm.inputs(processor, [tm.image(s) for s in seeds], list(questions))


def kept_positions(sample: v2drop.SampleTrace, layer: int, seq_len: int, pad: int = 0) -> list[int]:
    """Positions in the (padded) input that layer ``layer`` processes."""
    vision = set(sample.vision_positions)
    alive = {sample.vision_positions[i] for i in sample.alive_after(layer)}
    return [p for p in range(pad, seq_len) if p not in vision or p in alive]


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_is_exact(tiny, family, attn):
    model, processor = tiny(family, attn)
    trace = tm.assert_keep_all_exact(model, batch(processor), gen=GEN)
    assert trace.samples[0].alive_per_layer == [trace.samples[0].num_vision_tokens] * 6


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("family", FAMILIES)
def test_cache_equals_no_cache(tiny, family, attn):
    model, processor = tiny(family, attn)
    cached, uncached = tm.assert_cache_equals_no_cache(model, batch(processor), SCHEDULE, GEN)
    assert cached.kv_cache_bytes and cached.tokens_generated == GEN["max_new_tokens"]
    assert cached.prefill_calls == 1
    assert uncached.prefill_calls == GEN["max_new_tokens"]  # no cache: every step re-runs the prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_first_drop_keeps_top_variation(tiny, family):
    model, processor = tiny(family, "sdpa")
    inputs = batch(processor)
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states  # hs[l] = input of layer l
    with v2drop.apply(model, SCHEDULE) as run, torch.no_grad():
        model(**inputs)
    layer = 2
    for b, sample in enumerate(run.trace.samples):
        pos = torch.tensor(sample.vision_positions)
        score = (hs[layer][b, pos] - hs[layer - 1][b, pos]).norm(dim=-1)
        k = int(len(pos) * 0.5)
        expected = sorted(score.topk(k).indices.tolist())
        assert sample.kept[layer] == expected
        torch.testing.assert_close(torch.tensor(sample.scores[layer]["score"]), score, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_matches_single_runs(tiny, family):
    model, processor = tiny(family, "sdpa")
    questions = ("what is in the image ?", "how many red shape are there ? yes no")  # different lengths -> padding
    inputs = batch(processor, questions=questions)
    assert (inputs["attention_mask"] == 0).any(), "the test needs a padded prompt"
    with v2drop.apply(model, SCHEDULE) as run:
        together = model.generate(**inputs, **GEN)
        batch_trace = run.trace
        for b in range(2):
            alone_inputs = tm.inputs(processor, [tm.image((1, 2)[b])], [questions[b]])
            alone = model.generate(**alone_inputs, **GEN)
            prompt_len = alone_inputs["input_ids"].shape[1]
            assert together[b, -GEN["max_new_tokens"]:].tolist() == alone[0, prompt_len:].tolist()
            assert batch_trace.samples[b].kept == run.trace.samples[0].kept


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_tokens_keep_original_positions(tiny, family):
    model, processor = tiny(family, "sdpa")
    inputs = batch(processor)
    probe_layer = 5  # after both drops
    seen = {}

    def grab(module, args, kwargs):
        seen["cos"] = kwargs["position_embeddings"][0].detach().clone()

    layer = model.model.language_model.layers[probe_layer]
    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        before = model(**inputs).logits
    handle.remove()
    full_cos = seen["cos"]
    with v2drop.apply(model, SCHEDULE) as run, torch.no_grad():
        handle = layer.register_forward_pre_hook(grab, with_kwargs=True)  # runs after the engine's hook
        model(**inputs)
        handle.remove()
    pruned_cos = seen["cos"]
    seq_len = inputs["input_ids"].shape[1]
    pads = (inputs["attention_mask"] == 0).sum(1).tolist()
    assert pads[0] != pads[1], "the test needs prompts of different lengths"
    for b, sample in enumerate(run.trace.samples):
        positions = kept_positions(sample, probe_layer, seq_len, pads[b])   # the padding goes at the first drop
        # the shorter prompt is left-filled up to the longer one
        assert pruned_cos.shape[-2] == seq_len - min(pads) - len(sample.vision_positions) + len(sample.alive_after(probe_layer))
        expected = full_cos.expand(2, -1, -1)[b, positions]
        assert torch.equal(pruned_cos.expand(2, -1, -1)[b, -len(positions):], expected), f"sample {b} (pad {pads[b]})"
    with torch.no_grad():
        after = model(**inputs).logits
    assert torch.equal(before, after), "the model must be bit-identical after apply() exits"


def test_qwen_uses_3d_mrope_positions(tiny):
    """Qwen2-VL's vision tokens share temporal ids and differ in height/width ids: under v2drop, a
    layer after both drops must see exactly the 3-D rotary phases of the tokens it kept, which a
    1-D reading of the same positions would not give."""
    model, processor = tiny("qwen2_vl", "sdpa")
    inputs = batch(processor)
    assert "mm_token_type_ids" in inputs
    position_ids, _ = model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])  # (3, B, L)
    probe_layer, seen = 5, {}

    def grab(module, args, kwargs):
        seen["cos"] = kwargs["position_embeddings"][0].detach().clone()  # (B, n, head_dim)

    layer = model.model.language_model.layers[probe_layer]
    rotary = model.model.language_model.rotary_emb
    with v2drop.apply(model, SCHEDULE) as run, torch.no_grad():
        handle = layer.register_forward_pre_hook(grab, with_kwargs=True)  # runs after the engine's hook
        model(**inputs)
        handle.remove()
    seq_len = inputs["input_ids"].shape[1]
    for b, sample in enumerate(run.trace.samples):
        pad = int((inputs["attention_mask"][b] == 0).sum())
        kept = kept_positions(sample, probe_layer, seq_len, pad)
        ids = position_ids[:, b:b + 1, kept]                               # (3, 1, n)
        assert len(set(ids[1].flatten().tolist())) > 1, "height ids must vary over the kept tokens"
        cos = seen["cos"][b:b + 1, -len(kept):]                            # the row's own tokens, after its fillers
        expected, _ = rotary(cos, ids)
        assert torch.equal(cos, expected), f"sample {b}"
        one_d, _ = rotary(cos, ids[:1])                                    # the temporal id on every axis
        assert not torch.equal(cos, one_d)


def test_text_only_prompt_drops_nothing(tiny):
    model, processor = tiny("llava", "sdpa")
    tokens = processor.tokenizer(["what is in the picture ?"], return_tensors="pt")
    ref = model.generate(**tokens, **GEN)
    with v2drop.apply(model, SCHEDULE) as run:
        out = model.generate(**tokens, **GEN)
    assert torch.equal(ref, out)
    assert run.trace.samples[0].num_vision_tokens == 0 and run.trace.samples[0].kept == {}


def test_trace_is_json_and_complete(tiny):
    model, processor = tiny("llava", "sdpa")
    inputs = batch(processor)
    with v2drop.apply(model, SCHEDULE, trace_all_layers=True) as run:
        model.generate(**inputs, **GEN)
    data = json.loads(run.trace.to_json())
    again = v2drop.Trace.from_dict(data)
    sample = again.samples[0]
    assert sorted(sample.kept) == [2, 4]
    assert len(sample.kept[4]) == int(int(sample.num_vision_tokens * 0.5) * 0.25)
    assert set(sample.kept[4]) <= set(sample.kept[2])
    assert sorted(sample.scores) == [1, 2, 3, 4, 5]   # every layer with a previous layer
    assert len(sample.scores[3]["index"]) == len(sample.kept[2])
    assert sample.layout is not None and len(sample.layout.cells) == sample.num_vision_tokens
    assert data["prefill_seconds"] > 0 and data["decode_seconds"] > 0 and data["peak_memory_bytes"] > 0
    assert data["memory_kind"] == "process_rss"


@pytest.mark.parametrize("text, message", [
    ("0:0.5", "layer 0"),
    ("3:0.5,3:0.2", "twice"),
    ("4:0.5,2:0.2", "increasing"),
    ("2:1.5", "outside \\[0, 1\\]"),
    ("2:-0.1", "outside \\[0, 1\\]"),
    ("two:0.5", "not an integer"),
    ("2:half", "not a number"),
    ("2-0.5", "expected 'layer:keep_ratio'"),
    ("9:0.5", "outside the model"),
])
def test_bad_schedules_raise(tiny, text, message):
    model, _ = tiny("llava", "sdpa")
    with pytest.raises(ValueError, match=message):
        with v2drop.apply(model, text):
            pass


def test_unsupported_model_lists_supported(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(v2drop.UnsupportedModelError, match="llava_onevision.*qwen2_vl"):
        with v2drop.apply(model, "2:0.5"):
            pass


def test_untested_transformers_version_refused(monkeypatch):
    from v2drop import compat
    monkeypatch.delenv(compat.ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(RuntimeError, match="tested with transformers"):
        compat.check_transformers_version("5.30.0")
    compat.check_transformers_version("5.24.0")
    monkeypatch.setenv(compat.ALLOW_UNTESTED_ENV, "1")
    compat.check_transformers_version("5.30.0")


def test_hooks_removed_on_error(tiny):
    model, processor = tiny("llava", "sdpa")
    layer = model.model.language_model.layers[0]
    with pytest.raises(KeyError):
        with v2drop.apply(model, SCHEDULE):
            assert layer._forward_pre_hooks
            raise KeyError("boom")
    assert not layer._forward_pre_hooks and not model._forward_pre_hooks


def test_paused_session_continues_its_own_sequence(tiny):
    """Interleaving unpruned steps (paused hooks) with pruned steps gives both runs' own outputs."""
    model, processor = tiny("llava", "sdpa")
    inputs = batch(processor)
    full = model.generate(**inputs, **GEN)
    with v2drop.apply(model, SCHEDULE) as run:
        pruned = model.generate(**inputs, **GEN)
        with run.paused():
            assert torch.equal(model.generate(**inputs, **GEN), full)
        assert torch.equal(model.generate(**inputs, **GEN), pruned)


def test_llava_next_layout_of_wide_image(tiny):
    """A wide image gets a wide crop grid (rows * (cols + 1) tokens), under generate() too."""
    model, processor = tiny("llava_next", "sdpa")
    inputs = tm.inputs(processor, [tm.image(3, (64, 32))], ["what"])
    with v2drop.apply(model, SCHEDULE) as run:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        guessed = run.trace.samples[0].layout
        run.relayout(inputs)
    layout = run.trace.samples[0].layout
    assert layout.kinds == ["base", "crop"] and layout.grids[0] == (4, 4)
    rows, cols = layout.grids[1]
    assert cols > rows, layout.grids
    assert len(layout.cells) == run.trace.samples[0].num_vision_tokens
    assert guessed.grids == layout.grids
