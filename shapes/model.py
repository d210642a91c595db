"""The embedded Shapes model: a tiny stock ``LlavaForConditionalGeneration``.

Architecture (all stock transformers 5.x classes, ``model_type="llava"``):

* vision tower: ``SiglipVisionConfig`` - 128x128 input, patch 8 -> 16x16 = 256 vision
  tokens, 2 layers, width 128, 4 heads, no pooling head;
  ``vision_feature_layer=-1``, ``vision_feature_select_strategy="full"`` (all 256 patches).
* projector: LLaVA 2-layer GELU MLP 128 -> 256 -> 256.
* language model: ``Qwen2Config`` - 8 layers, width 256, 4 heads / 2 KV heads, MLP 768,
  RoPE, tied embeddings, word-level vocabulary (83 tokens).

Tokenizer: a word-level ``tokenizers`` model (lower-casing, whitespace/punctuation split)
wrapped as ``PreTrainedTokenizerFast`` with special tokens ``<pad> <unk> <s> </s> <image>
<|user|> <|assistant|> <|end|>``.  The chat template renders::

    <s><|user|> <image> what color is the star ? <|end|><|assistant|> red <|end|>

The image placeholder always comes first in a user turn, before the question text.
``LlavaProcessor`` (``patch_size=8``, ``vision_feature_select_strategy="full"``,
``num_additional_image_tokens=0``) expands ``<image>`` to 256 ``<image>`` tokens.
Both entry points work:

* ``processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
  return_dict=True, return_tensors="pt")`` with
  ``messages=[{"role": "user", "content": [{"type": "image", "image": pil},
  {"type": "text", "text": question}]}]``;
* ``processor(images=pil, text=processor.apply_chat_template(messages,
  add_generation_prompt=True, tokenize=False), return_tensors="pt")``.

Generation stops at ``<|end|>`` (the generation config's ``eos_token_id``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .embedded import EMBEDDED_MODELS
from .scenes import IMAGE_SIZE, VOCAB_WORDS

REPO_ROOT = Path(__file__).resolve().parents[1]
# every Shapes model the app ships (the default first): the list itself is shapes.embedded's
EMBEDDED_MODEL_DIRS = tuple(m.folder for m in EMBEDDED_MODELS)
DEFAULT_MODEL_DIR = EMBEDDED_MODEL_DIRS[0]

PATCH_SIZE = 8
NUM_VISION_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 256
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<|user|>", "<|assistant|>", "<|end|>"]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %} <image>{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %} {{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %} <|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(extra_words: tuple[str, ...] = ()):
    """Word-level fast tokenizer over ``scenes.VOCAB_WORDS`` (then ``extra_words``, e.g. the
    cell language of ``shapes.cells``) plus special tokens."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in list(VOCAB_WORDS) + list(extra_words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|end|>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_image_processor():
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return SiglipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def build_processor(target_dir: str | None = None, extra_words: tuple[str, ...] = ()):
    """Build the ``LlavaProcessor`` (optionally saving it to ``target_dir``); ``extra_words``
    extend the vocabulary (``build_tokenizer``)."""
    from transformers import LlavaProcessor

    proc = LlavaProcessor(
        image_processor=build_image_processor(),
        tokenizer=build_tokenizer(extra_words),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
    )
    if target_dir is not None:
        os.makedirs(target_dir, exist_ok=True)
        proc.save_pretrained(target_dir)
    return proc


def build_config(tokenizer=None):
    """The ``LlavaConfig`` of the Shapes model."""
    from transformers import LlavaConfig, Qwen2Config, SiglipVisionConfig

    tok = tokenizer or build_tokenizer()
    vocab_size = len(tok)
    vision = SiglipVisionConfig(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_channels=3,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=NUM_VISION_TOKENS,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    cfg.pad_token_id = tok.pad_token_id
    return cfg


def build_model(seed: int = 0, tokenizer=None):
    """Randomly initialised Shapes model (float32)."""
    import torch
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    tok = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(tok))
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=3,
    )
    return model


def load_default(device: str = "cpu", model_dir: str | None = None):
    """Load the shipped model and processor (eval mode, float32), fully offline."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = model_dir or DEFAULT_MODEL_DIR
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(
            f"no trained Shapes model in {path}; run `python -m shapes.train --out {path}`"
        )
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    model.to(device).eval()
    return model, processor
