"""Real-size model shapes with random weights, for timing and memory only (answers are noise).

What is real and what is not:

* the language model has the real architecture and size (layers, widths, heads, KV heads,
  MLP width, vocabulary, tied embeddings), so prefill/decode cost is the real model's;
* the vision tower is a tiny stand-in (one layer, width 32) that still emits the real NUMBER
  of vision tokens, because only the language model is timed (the paper's timings also exclude
  the encoder, see paper-notes §3); its cost is well under 1 % of the LLM's and the benchmark
  times the language model's forward separately anyway;
* prompts are random token ids around a real-length vision block (no tokenizer needed).

``onevision-0.5b``: LLaVA-OneVision-0.5B's language model (Qwen2-0.5B: 24 layers, hidden 896,
14 heads, 2 KV heads, MLP 4864, vocab 151,936) behind a stock ``LlavaForConditionalGeneration``
with 729 (27×27) vision tokens, i.e. one SigLIP-so400m/384 base image without anyres crops.
``qwen2-vl-2b``: Qwen2-VL-2B's language model (28 layers, hidden 1536, 12 heads, 2 KV heads,
MLP 8960, M-RoPE) in a stock ``Qwen2VLForConditionalGeneration`` with a 64×64-patch image,
i.e. 1,024 merged vision tokens (a 32×32 grid).
``tiny``: a 4-layer toy of the LLaVA layout for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["ModelSpec", "SPECS", "build", "make_inputs"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str                      # "llava" or "qwen2_vl"
    text: dict = field(default_factory=dict)
    grid: int = 27                   # vision tokens per image / frame = grid × grid
    frames: int = 1                  # images (video frames) in the prompt, all in one drop pool
    prefix_tokens: int = 14          # text before the image (system prompt, "user:")
    suffix_tokens: int = 20          # question and assistant prompt after it
    description: str = ""

    @property
    def num_vision_tokens(self) -> int:
        return self.frames * self.grid * self.grid

    @property
    def num_text_tokens(self) -> int:
        return self.prefix_tokens + self.suffix_tokens + (2 if self.family == "qwen2_vl" else 0)


QWEN_VOCAB = 151_936
_ONEVISION_TEXT = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=QWEN_VOCAB, tie_word_embeddings=True,
                       rope_theta=1_000_000.0, max_position_embeddings=32768)
SPECS: dict[str, ModelSpec] = {
    "onevision-0.5b": ModelSpec(
        "onevision-0.5b", "llava", _ONEVISION_TEXT, grid=27, description="LLaVA-OneVision-0.5B language model (Qwen2-0.5B), 729 vision tokens, random weights"),
    "qwen2-vl-2b": ModelSpec(
        "qwen2-vl-2b", "qwen2_vl",
        dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
             num_key_value_heads=2, vocab_size=QWEN_VOCAB, tie_word_embeddings=True, max_position_embeddings=32768,
             rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}),
        grid=32, description="Qwen2-VL-2B language model (M-RoPE), 1,024 vision tokens, random weights"),
    **{f"onevision-0.5b-video-{n}f": ModelSpec(
        f"onevision-0.5b-video-{n}f", "llava", _ONEVISION_TEXT, grid=14, frames=n,
        description=f"LLaVA-OneVision-0.5B language model on a {n}-frame video: {n} x 196 pooled vision "
                    f"tokens (14x14 per frame, OneVision's 2x2 video pooling), random weights")
       for n in (8, 16, 32)},
    "tiny": ModelSpec(
        "tiny", "llava",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, max_position_embeddings=4096),
        grid=8, prefix_tokens=4, suffix_tokens=6, description="4-layer toy (tests)"),
    "tiny-qwen2-vl": ModelSpec(
        "tiny-qwen2-vl", "qwen2_vl",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=QWEN_VOCAB, max_position_embeddings=4096,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        grid=4, prefix_tokens=4, suffix_tokens=6, description="6-layer toy of the Qwen2-VL layout (tests)"),
    "tiny-video": ModelSpec(
        "tiny-video", "llava",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, max_position_embeddings=4096),
        grid=4, frames=3, prefix_tokens=4, suffix_tokens=6, description="4-layer toy, 3 frames (tests)"),
}

IMAGE_ID = {"llava": 151_646, "qwen2_vl": 151_655}   # the real models' image-token ids
QWEN_SPECIAL = dict(image_token_id=151_655, video_token_id=151_656, vision_start_token_id=151_652,
                    vision_end_token_id=151_653)


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, ModelSpec]:
    """A float32 eval-mode model of spec ``name`` with random weights (SDPA attention)."""
    spec = SPECS[name]
    torch.manual_seed(seed)
    vocab = spec.text["vocab_size"]
    if spec.family == "llava":
        from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2Config, SiglipVisionConfig

        image_id = IMAGE_ID["llava"] if vocab > IMAGE_ID["llava"] else vocab - 1
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=2 * spec.grid, patch_size=2, vision_use_head=False)
        config = LlavaConfig(vision_config=vision, text_config=Qwen2Config(**spec.text), image_token_id=image_id,
                             image_seq_length=spec.num_vision_tokens, vision_feature_select_strategy="full",
                             vision_feature_layer=-1, projector_hidden_act="gelu",
                             tie_word_embeddings=spec.text.get("tie_word_embeddings", False))
        config._attn_implementation = "sdpa"
        model = LlavaForConditionalGeneration(config)
    elif spec.family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        vision = dict(depth=1, embed_dim=32, hidden_size=spec.text["hidden_size"], num_heads=2, mlp_ratio=2,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=spec.text, vision_config=vision,
                               tie_word_embeddings=spec.text.get("tie_word_embeddings", False), **QWEN_SPECIAL)
        config._attn_implementation = "sdpa"
        model = Qwen2VLForConditionalGeneration(config)
    else:
        raise ValueError(spec.family)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.float().eval(), spec


def make_inputs(model: torch.nn.Module, spec: ModelSpec, seed: int = 0) -> dict[str, Any]:
    """One prompt (batch 1): random text ids around the vision block, random pixels."""
    g = torch.Generator().manual_seed(seed)
    top = min(spec.text["vocab_size"], 150_000)

    def words(n: int) -> torch.Tensor:
        return torch.randint(10, top, (n,), generator=g)

    config = model.config
    if spec.family == "llava":
        vision = torch.full((spec.num_vision_tokens,), config.image_token_id)
        ids = torch.cat([words(spec.prefix_tokens), vision, words(spec.suffix_tokens)]).unsqueeze(0)
        size = config.vision_config.image_size
        return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                    pixel_values=torch.randn(spec.frames, 3, size, size, generator=g))
    patches = spec.grid * 2                                    # merge 2: patch grid = 2 × token grid
    vision = torch.full((spec.num_vision_tokens,), config.image_token_id)
    ids = torch.cat([words(spec.prefix_tokens), torch.tensor([config.vision_start_token_id]), vision,
                     torch.tensor([config.vision_end_token_id]), words(spec.suffix_tokens)]).unsqueeze(0)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                mm_token_type_ids=(ids == config.image_token_id).int(),
                pixel_values=torch.randn(patches * patches, 3 * 2 * 14 * 14, generator=g),
                image_grid_thw=torch.tensor([[1, patches, patches]]))


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.model.language_model
