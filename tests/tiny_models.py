"""Tiny, randomly initialised models of every supported family, built from a config, saved with
``save_pretrained`` and loaded back with ``from_pretrained`` (the path a hub id takes), with
processors built locally. No network is needed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForImageTextToText, PreTrainedTokenizerFast

from v2drop.loading import has_torchvision, image_only_class, load_processor

WORDS = ("what is in the image describe it a cat dog red blue green shape color how many are there "
         "yes no left right top bottom user assistant system you helpful picture photo of and").split()

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl")

QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>", "<|endoftext|>"]
LLAVA_SPECIALS = ["<pad>", "<s>", "</s>", "<image>", "<video>"]


def make_tokenizer(specials: list[str], pad: str, eos: str, bos: str | None = None) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(specials + ["<unk>"] + WORDS + list("?.,:!"))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token=pad, eos_token=eos,
                                   bos_token=bos, padding_side="left")
    fast.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in (pad, eos, bos)]})
    return fast


def _text_config(kind: str, vocab: int, **extra):
    from transformers import LlamaConfig, Qwen2Config
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, **extra)
    return (LlamaConfig if kind == "llama" else Qwen2Config)(**common)


def build(family: str, root: str | os.PathLike, attn: str = "sdpa", seed: int = 0):
    """Build, save and reload a tiny model + processor of ``family``; returns (model, processor)."""
    torch.manual_seed(seed)
    path = Path(root) / family
    if family in ("llava", "llava_next", "llava_onevision"):
        tokenizer = make_tokenizer(LLAVA_SPECIALS, pad="<pad>", eos="</s>", bos="<s>")
        image_id = tokenizer.convert_tokens_to_ids("<image>")
        video_id = tokenizer.convert_tokens_to_ids("<video>")
        vocab = len(tokenizer)
        from transformers import CLIPVisionConfig, SiglipVisionConfig
        if family == "llava":
            from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
            vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      image_size=64, patch_size=8, projection_dim=32)
            config = LlavaConfig(vision_config=vision, text_config=_text_config("llama", vocab), image_token_id=image_id,
                                 vision_feature_layer=-1, vision_feature_select_strategy="default",
                                 pad_token_id=tokenizer.pad_token_id)
            model = LlavaForConditionalGeneration(config)
            improc = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
            processor = LlavaProcessor(image_processor=improc, tokenizer=tokenizer, patch_size=8,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       chat_template=LLAVA_TEMPLATE)
        elif family == "llava_next":
            from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                                      LlavaNextProcessor)
            vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      image_size=32, patch_size=8, projection_dim=32)
            pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
            config = LlavaNextConfig(vision_config=vision, text_config=_text_config("qwen2", vocab),
                                     image_token_id=image_id, image_grid_pinpoints=pinpoints,
                                     vision_feature_layer=-1, vision_feature_select_strategy="default",
                                     pad_token_id=tokenizer.pad_token_id)
            model = LlavaNextForConditionalGeneration(config)
            improc = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                             image_grid_pinpoints=pinpoints)
            processor = LlavaNextProcessor(image_processor=improc, tokenizer=tokenizer, patch_size=8,
                                           vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                           chat_template=LLAVA_TEMPLATE)
        else:
            from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                                      LlavaOnevisionImageProcessor, LlavaOnevisionProcessor)
            vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8)
            pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
            config = LlavaOnevisionConfig(vision_config=vision, text_config=_text_config("qwen2", vocab),
                                          image_token_id=image_id, video_token_id=video_id,
                                          image_grid_pinpoints=pinpoints, vision_feature_layer=-1,
                                          vision_feature_select_strategy="full", pad_token_id=tokenizer.pad_token_id)
            model = LlavaOnevisionForConditionalGeneration(config)
            improc = LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints)
            processor = _no_video(LlavaOnevisionProcessor)(image_processor=improc, tokenizer=tokenizer, video_processor=None,
                                                num_image_tokens=16, vision_feature_select_strategy="full",
                                                chat_template=LLAVA_TEMPLATE)
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        tokenizer = make_tokenizer(QWEN_SPECIALS, pad="<|endoftext|>", eos="<|im_end|>")
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
        vocab = len(tokenizer)
        text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
        token_ids = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
        from transformers import Qwen2VLImageProcessor
        improc = Qwen2VLImageProcessor(min_pixels=112 * 112, max_pixels=112 * 112, patch_size=14, merge_size=2)
        if family == "qwen2_vl":
            from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
            vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2)
            config = Qwen2VLConfig(text_config=text, vision_config=vision, pad_token_id=tokenizer.pad_token_id,
                                   **token_ids)
            model = Qwen2VLForConditionalGeneration(config)
            processor = _no_video(Qwen2VLProcessor)(image_processor=improc, tokenizer=tokenizer, video_processor=None,
                                         chat_template=QWEN_TEMPLATE)
        else:
            from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                          fullatt_block_indexes=[1])
            config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, pad_token_id=tokenizer.pad_token_id,
                                      **token_ids)
            model = Qwen2_5_VLForConditionalGeneration(config)
            processor = _no_video(Qwen2_5_VLProcessor)(image_processor=improc, tokenizer=tokenizer, video_processor=None,
                                            chat_template=QWEN_TEMPLATE)
    else:
        raise ValueError(family)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attn, dtype=torch.float32).eval()
    processor = load_processor(path)
    return model, processor


def _no_video(cls: type) -> type:
    return cls if has_torchvision() else image_only_class(cls)


LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image> {% elif c['type'] == 'video' %}<video> {% else %}{{ c['text'] }} {% endif %}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def image(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def inputs(processor, images, questions, video=None):
    """Batch of chat prompts (image first, then the question), left-padded."""
    texts = []
    for q in questions:
        content = [{"type": "video"} if video is not None else {"type": "image"}, {"type": "text", "text": q}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                   tokenize=False))
    kwargs = dict(text=texts, return_tensors="pt", padding=True)
    if video is not None:
        kwargs["videos"] = video
    else:
        kwargs["images"] = images
    return processor(**kwargs)


def assert_keep_all_exact(model, inputs, layers=(1, 2, 4), gen=None):
    """A keep-all schedule must give the unpatched model's ids and logits (within 1e-5);
    returns the run's trace."""
    import v2drop

    gen = gen or dict(max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        ref_logits = model(**inputs).logits
    ref_ids = model.generate(**inputs, **gen)
    with v2drop.apply(model, v2drop.DropSchedule.keep_all(list(layers))) as run:
        with torch.no_grad():
            logits = model(**inputs).logits
        ids = model.generate(**inputs, **gen)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    return run.trace


def greedy_answers(model, inputs, schedule, max_new_tokens):
    """Generated ids after the prompt, unpatched and under ``schedule`` (sample 0)."""
    import v2drop

    n = inputs["input_ids"].shape[1]
    gen = dict(max_new_tokens=max_new_tokens, do_sample=False)
    with torch.inference_mode():
        full_ids = model.generate(**inputs, **gen)[0, n:].tolist()
        with v2drop.apply(model, schedule):
            drop_ids = model.generate(**inputs, **gen)[0, n:].tolist()
    return full_ids, drop_ids


def decode_answer(tokenizer, ids):
    return tokenizer.decode([i for i in ids if i != tokenizer.eos_token_id], skip_special_tokens=True).strip()


def assert_cache_equals_no_cache(model, inputs, schedule, gen):
    """Under ``schedule``, cached and uncached greedy generation agree token for token, and the
    cached run dropped as the schedule says; returns the traces of the cached and uncached runs."""
    import v2drop

    with v2drop.apply(model, schedule) as run:
        cached = model.generate(**inputs, use_cache=True, **gen)
        trace = run.trace
        uncached = model.generate(**inputs, use_cache=False, **gen)
    assert torch.equal(cached, uncached)
    sample = trace.samples[0]
    assert sample.num_vision_tokens > 0
    depth = len(v2drop.get_adapter(model).decoder_layers())
    assert sample.alive_per_layer == v2drop.DropSchedule.parse(schedule).alive_per_layer(depth, sample.num_vision_tokens)
    return trace, run.trace
