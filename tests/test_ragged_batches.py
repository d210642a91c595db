"""Ragged batches: samples with different numbers of vision tokens (mixed image sizes, a second
image, a text-only prompt, videos of different lengths) in one padded batch. Every sample must
keep the tokens it keeps alone, answer what it answers alone, and trace what it traces alone."""

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models as tm
import v2drop
from v2drop.video_inputs import video_batch_inputs

FAMILIES = tm.FAMILIES
ATTNS = ("sdpa", "eager")
SCHEDULE = "2:0.5,4:0.25"           # 6-layer tiny models
GEN = dict(max_new_tokens=5, do_sample=False)
QUESTIONS = ("what is in the image ?", "how many red shape are there ? yes no", "describe it")


def specs(family: str) -> list[tuple[list[tuple[int, int]], str]]:
    """(image sizes, question) per sample: a square image, a wide one (two images for LLaVA-1.5,
    whose grid is fixed), and a text-only prompt; every sample has its own vision-token count."""
    second = [(40, 120), (32, 64)] if family == "llava" else [(40, 120)]
    return [([(64, 64)], QUESTIONS[0]), (second, QUESTIONS[1]), ([], QUESTIONS[2])]


def build_inputs(processor, samples, side: str = "left"):
    """Processor output for ``samples`` (see :func:`specs`), padded on ``side``."""
    texts, images = [], []
    for sizes, question in samples:
        content = [{"type": "image"} for _ in sizes] + [{"type": "text", "text": question}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False))
        images += [tm.image(len(question) + i, size) for i, size in enumerate(sizes)]  # a sample's own pixels
    tokenizer = processor.tokenizer
    old, tokenizer.padding_side = tokenizer.padding_side, side
    try:
        return processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = old


def vision_counts(model, inputs) -> list[int]:
    ids = torch.tensor(v2drop.get_adapter(model).vision_token_ids())
    return torch.isin(inputs["input_ids"], ids).sum(1).tolist()


def video_frames(seed: int, n: int, size=(64, 48)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = []
    for i in range(n):  # a bright square moving across
        frame = base.copy()
        x = int(i * (size[0] - 16) / max(1, n - 1))
        frame[10:26, x:x + 16] = 250
        out.append(Image.fromarray(frame))
    return out


def video_cases(family: str):
    """(batch inputs, [inputs of each sample alone]) for a batch of videos of different lengths.
    LLaVA-OneVision's processor stacks the frames of a batch into one tensor (and resizes every
    frame to one size), so its two videos have equal lengths and only their prompts differ."""
    lengths = (4, 4) if family == "llava_onevision" else (4, 8)
    prompts = ["what is in the image ?", "how many red shape are there ? describe it"]
    videos = [video_frames(5 + k, n) for k, n in enumerate(lengths)]

    def run(processor):
        together = video_batch_inputs(processor, videos, prompts)
        alone = [video_batch_inputs(processor, [v], [p]) for v, p in zip(videos, prompts)]
        return together, alone
    return run


def generate_new(model, inputs, schedule, method="v2drop", **gen):
    """New token ids per sample (prompt cut off) and the trace, under ``schedule``. A random tiny
    model may pick a vision token id, which a no-cache step would read as an image: suppressed."""
    suppress = v2drop.get_adapter(model).vision_token_ids()
    with v2drop.apply(model, schedule, method=method) as run, torch.inference_mode():
        out = model.generate(**inputs, **{**GEN, "suppress_tokens": suppress, **gen})
    return out[:, inputs["input_ids"].shape[1]:].tolist(), run.trace


def alone_inputs(processor, family, side="left"):
    return [build_inputs(processor, [s], side) for s in specs(family)]


# ---------------------------------------------------------------------- keep-all: the unmodified model
@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_ragged_batch_is_exact(tiny, family, attn):
    model, processor = tiny(family, attn)
    for side in ("left", "right"):
        inputs = build_inputs(processor, specs(family), side)
        counts = vision_counts(model, inputs)
        assert len(set(counts)) == 3 and 0 in counts, counts
        with torch.no_grad():
            ref = model(**inputs).logits
        with v2drop.apply(model, v2drop.DropSchedule.keep_all([1, 2, 4])) as run, torch.no_grad():
            logits = model(**inputs).logits
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
        assert [s.num_vision_tokens for s in run.trace.samples] == counts


# ---------------------------------------------------------------------- under a schedule: as alone
def assert_same_trace(together: v2drop.SampleTrace, alone: v2drop.SampleTrace) -> None:
    assert together.num_vision_tokens == alone.num_vision_tokens
    assert together.alive_per_layer == alone.alive_per_layer
    assert together.kept == alone.kept
    assert together.layout == alone.layout
    assert together.scores.keys() == alone.scores.keys()
    for layer, entry in alone.scores.items():
        assert together.scores[layer]["index"] == entry["index"]
        np.testing.assert_allclose(together.scores[layer]["score"], entry["score"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_batch_generates_as_each_sample_alone(tiny, family, attn):
    model, processor = tiny(family, attn)
    inputs = build_inputs(processor, specs(family))
    together, trace = generate_new(model, inputs, SCHEDULE)
    depth = len(model.model.language_model.layers)
    for b, single in enumerate(alone_inputs(processor, family)):
        alone, alone_trace = generate_new(model, single, SCHEDULE)
        assert together[b] == alone[0], f"sample {b}"
        assert_same_trace(trace.samples[b], alone_trace.samples[0])
        n = trace.samples[b].num_vision_tokens
        assert trace.samples[b].alive_per_layer == v2drop.DropSchedule.parse(SCHEDULE).alive_per_layer(depth, n)
    assert trace.samples[2].num_vision_tokens == 0 and trace.samples[2].kept == {}


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_prefill_logits_match_alone(tiny, family, attn):
    """The last prompt token's logits of each sample, left- and right-padded, equal its own run's
    (1e-4): filler slots and padding are masked in every layer. The first drop removes the prompt
    padding too, so every sample's last token ends in the last column."""
    model, processor = tiny(family, attn)
    for side in ("left", "right"):
        inputs = build_inputs(processor, specs(family), side)
        with v2drop.apply(model, SCHEDULE) as run, torch.no_grad():
            logits = model(**inputs).logits                                  # (B, L_kept, V)
            samples = run.trace.samples
            for b, single in enumerate(alone_inputs(processor, family, side)):
                alone = model(**single).logits[0, -1]
                torch.testing.assert_close(logits[b, -1], alone, atol=1e-4, rtol=0)
        real = inputs["attention_mask"].sum(1).tolist()                      # tokens of each prompt
        kept = [n - s.num_vision_tokens + s.alive_per_layer[-1] for n, s in zip(real, samples)]
        assert logits.shape[1] == max(kept), "the batch is as wide as the sample that keeps most"


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_cache_equals_no_cache(tiny, family, attn):
    model, processor = tiny(family, attn)
    inputs = build_inputs(processor, specs(family))
    cached, trace = generate_new(model, inputs, SCHEDULE, use_cache=True)
    uncached, _ = generate_new(model, inputs, SCHEDULE, use_cache=False)
    assert cached == uncached
    assert trace.samples[1].alive_per_layer[5] < trace.samples[0].alive_per_layer[1]


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl", "qwen2_5_vl"])
def test_video_batch_of_different_lengths(tiny, family, attn):
    model, processor = tiny(family, attn)
    together_inputs, singles = video_cases(family)(processor)
    counts = vision_counts(model, together_inputs)
    if family != "llava_onevision":
        assert counts[1] > counts[0] > 0, counts
    together, trace = generate_new(model, together_inputs, SCHEDULE)
    for b, single in enumerate(singles):
        alone, alone_trace = generate_new(model, single, SCHEDULE)
        assert together[b] == alone[0], f"sample {b}"
        assert_same_trace(trace.samples[b], alone_trace.samples[0])
    cached, _ = generate_new(model, together_inputs, SCHEDULE, use_cache=False)
    assert cached == together


@pytest.mark.parametrize("method", ["v2drop", "v2drop-cosine", "fastv", "pdrop", "random", "uniform", "downsample"])
def test_every_method_keeps_per_sample(tiny, method):
    """Any method: each sample keeps ⌊n_i × r⌋ of its own tokens, the same ones as alone."""
    model, processor = tiny("qwen2_vl", "sdpa")
    schedule = "1:0.5,3:0.5" if method in ("fastv", "pdrop") else SCHEDULE
    inputs = build_inputs(processor, specs("qwen2_vl"))
    together, trace = generate_new(model, inputs, schedule, method=method)
    for b, single in enumerate(alone_inputs(processor, "qwen2_vl")):
        alone, alone_trace = generate_new(model, single, schedule, method=method)
        assert trace.samples[b].kept == alone_trace.samples[0].kept, f"sample {b}"
        assert together[b] == alone[0]


def test_samples_keep_their_own_counts(tiny):
    model, processor = tiny("llava_next", "sdpa")
    inputs = build_inputs(processor, specs("llava_next"))
    _, trace = generate_new(model, inputs, "2:0.5,4:0.3")
    for sample in trace.samples:
        n = sample.num_vision_tokens
        assert len(sample.kept.get(2, [])) == int(n * 0.5)
        assert len(sample.kept.get(4, [])) == int(int(n * 0.5) * 0.3)
    assert len({s.num_vision_tokens for s in trace.samples}) == 3


# ---------------------------------------------------------------------- the FlashAttention (varlen) contract
def test_flash_path_ragged_batch(tmp_path, monkeypatch):
    """The unpadded (varlen) path: a 2-D padding mask with filler slots masked, no position ids.
    Runs on the stand-in kernel of test_flash_path (flash-attn needs CUDA); benchmarks.gpu_check
    runs the same on flash_attention_2."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    from test_flash_path import NAME, flash_like_attention
    from v2drop import compat
    AttentionInterface.register(NAME, flash_like_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    monkeypatch.setattr(compat, "detects_packing_from_positions", lambda config: True)
    for family in ("llava_next", "qwen2_vl"):
        model, processor = tm.build(family, tmp_path / family, attn=NAME)
        inputs = build_inputs(processor, specs(family))
        together, _ = generate_new(model, inputs, SCHEDULE)
        for b, single in enumerate(alone_inputs(processor, family)):
            assert together[b] == generate_new(model, single, SCHEDULE)[0][0], f"{family} sample {b}"
        assert generate_new(model, inputs, SCHEDULE, use_cache=False)[0] == together


# ---------------------------------------------------------------------- fillers skip the MLP
def mlp_rows(model) -> tuple[list[int], list]:
    """Rows each decoder layer's MLP computes (its down projection's input rows), per call, and the
    hook handles to remove."""
    rows, handles = [], []
    for layer in model.model.language_model.layers:
        record = lambda module, args, out: rows.append(args[0].shape[:-1].numel())  # noqa: E731
        handles.append(layer.mlp.down_proj.register_forward_hook(record))
    return rows, handles


@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_prefill_runs_the_mlp_on_valid_slots_only(tiny, family):
    """In a prefill that drops, every layer's MLP sees each sample's own tokens only: no prompt
    padding before the first drop, no filler slots after it. Under keep-all (padding is part of
    the unmodified output) and in a batch without padding it sees every slot; outside the block
    the model is untouched."""
    model, processor = tiny(family, "sdpa")
    inputs = build_inputs(processor, specs(family))
    mlps = [layer.mlp for layer in model.model.language_model.layers]
    hooks_before = [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in mlps]
    with torch.no_grad():
        ref = model(**inputs).logits
    rows, handles = mlp_rows(model)
    try:
        with v2drop.apply(model, SCHEDULE) as run, torch.no_grad():
            logits = model(**inputs).logits
            rows_batch, samples = list(rows), run.trace.samples
            rows.clear()
            single = alone_inputs(processor, family)[0]
            model(**single)
            rows_alone, alone_sample = list(rows), run.trace.samples[0]
        rows.clear()
        with v2drop.apply(model, v2drop.DropSchedule.keep_all([2, 4])), torch.no_grad():
            model(**inputs)
            rows_keep_all = list(rows)
    finally:
        for handle in handles:
            handle.remove()
    batch, width = inputs["input_ids"].shape
    real = inputs["attention_mask"].sum(1).tolist()
    for idx, count in enumerate(rows_batch):
        own = [n - s.num_vision_tokens + s.alive_per_layer[idx] for n, s in zip(real, samples)]
        assert count == sum(own), f"layer {idx}"
    assert rows_batch[0] < batch * width, "the batch held padding"
    assert rows_batch[-1] < batch * logits.shape[1], "the batch held filler slots"
    n, length = alone_sample.num_vision_tokens, single["input_ids"].shape[1]
    assert rows_alone == [length - n + alive for alive in alone_sample.alive_per_layer]
    assert rows_keep_all == [batch * width] * len(mlps)
    assert [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in mlps] == hooks_before
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref)
