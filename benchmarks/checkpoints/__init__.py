"""Offline fixtures of the app's suggested hub checkpoints: real configs and processor settings,
random weights.

Each ``<name>.json`` beside this module holds one checkpoint's model config, image-processor and
processor settings, special tokens (at their real ids), chat template and the source of every value
(``sources``). :func:`build` turns a spec into a model + processor with random weights:

* ``size="real"``: the config as it is (real parameter count; use bf16 for the 7B ones);
* ``size="narrow"``: the language model and the vision tower narrowed (``narrow`` in the spec) while
  everything that decides token counts and layouts (image size, patch size, merge size, pinpoints,
  feature selection, processor settings, token ids) stays as it is.

:func:`save` writes a fixture as a folder that ``v2drop.loading.load_model`` reads like a hub
snapshot (the path ``python -m v2drop.check`` takes). The tokenizer is a small word-level one whose
special tokens sit at the real ids (the vocabulary is padded with filler entries), with the real
chat template, so prompts hold the real special tokens and as many image tokens as the real
processor writes; ordinary words tokenize differently from the real BPE.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedTokenizerFast

from v2drop.loading import image_only_class

__all__ = ["NAMES", "spec", "config", "tokenizer", "processor", "build", "save", "hub_ids"]

HERE = Path(__file__).parent
NAMES = tuple(sorted(p.stem for p in HERE.glob("*.json")))
WORDS = ("what is in the image describe it a photo of cat dog red blue green how many are there yes no left right "
         "top bottom user assistant system you helpful picture and this shows").split()


def spec(name: str) -> dict[str, Any]:
    """The stored spec of fixture ``name`` (one of :data:`NAMES`) or of hub id ``name``."""
    by_hub = {json.loads((HERE / f"{n}.json").read_text())["hub_id"]: n for n in NAMES}
    name = by_hub.get(name, name)
    if name not in NAMES:
        raise KeyError(f"no checkpoint fixture {name!r}; fixtures: {', '.join(NAMES)}")
    return json.loads((HERE / f"{name}.json").read_text())


def hub_ids() -> dict[str, str]:
    """``{fixture name: hub id}``."""
    return {name: spec(name)["hub_id"] for name in NAMES}


def config(name: str, size: str = "narrow") -> transformers.PreTrainedConfig:
    """The model config of fixture ``name``: real, or narrowed where it does not change layouts."""
    data = copy.deepcopy(spec(name)["config"])
    if size == "narrow":
        for part, overrides in spec(name).get("narrow", {}).items():
            data[part].update(overrides)
    elif size != "real":
        raise ValueError(f"size must be 'real' or 'narrow', not {size!r}")
    model_type = data.pop("model_type")
    data.pop("architectures", None)
    if model_type.startswith("qwen2"):
        data["vision_config"].pop("model_type", None)  # the class's own vision model type
    return AutoConfig.for_model(model_type, **data)


def tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with the checkpoint's special tokens at their real ids and its chat
    template; the vocabulary is padded with ``<|filler_i|>`` entries up to the largest special id."""
    tok_spec = spec(name)["tokenizer"]
    specials: dict[str, int] = tok_spec["specials"]
    taken = set(specials.values())
    vocab = dict(specials)
    free = (i for i in range(max(taken) + 1) if i not in taken)
    for word in ["<unk>"] * ("<unk>" not in vocab) + WORDS + list("?.,:!"):
        vocab[word] = next(free)
    for i in free:
        vocab[f"<|filler_{i}|>"] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bos = tok_spec.get("bos")
    if tok_spec.get("add_bos") and bos:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                               special_tokens=[(bos, specials[bos])])
    named = {tok_spec.get("bos"), tok_spec["eos"], tok_spec["pad"], "<unk>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token=bos,
                                   eos_token=tok_spec["eos"], pad_token=tok_spec["pad"], padding_side="left")
    fast.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in named]})
    fast.chat_template = spec(name)["chat_template"]
    return fast


def processor(name: str) -> Any:
    """The checkpoint's processor class with its real image-processor settings and the local
    tokenizer. Video-capable classes get no video processor (``v2drop.video_inputs`` then builds
    video inputs itself, with or without torchvision), so a fixture behaves the same everywhere."""
    proc = spec(name)["processor"]
    image_processor = getattr(transformers, proc["image_processor_class"])(**proc["image_processor"])
    cls = getattr(transformers, proc["processor_class"])
    kwargs = dict(proc.get("kwargs", {}))
    if "video_processor" in cls.get_attributes():
        cls, kwargs["video_processor"] = image_only_class(cls), None
    return cls(image_processor=image_processor, tokenizer=tokenizer(name), chat_template=spec(name)["chat_template"],
               **kwargs)


def build(name: str, size: str = "narrow", dtype: torch.dtype = torch.float32, seed: int = 0,
          attn_implementation: str = "sdpa", device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """``(model, processor)`` of fixture ``name`` with random weights, in eval mode, initialised
    directly on ``device`` (a 7B model is quick to initialise on a GPU, slow on a CPU)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config(name, size), dtype=dtype,
                                                        attn_implementation=attn_implementation)
    return model.eval(), processor(name)


def save(name: str, folder: str | os.PathLike, size: str = "narrow", seed: int = 0) -> Path:
    """Write fixture ``name`` as a model folder (config, random weights, tokenizer, processor)."""
    folder = Path(folder)
    model, proc = build(name, size, seed=seed)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder
