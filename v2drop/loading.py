"""Load a model and its processor from a hub id or a local folder.

``AutoProcessor`` in transformers 5.24 cannot build the processors of video-capable families
(Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision) when torchvision is missing, because their video
processor needs it. Images need no torchvision, so :func:`load_processor` then builds the same
processor class from its tokenizer and image processor, with no video processor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

__all__ = ["load_model", "load_processor", "cpu_dtype", "cpu_has_fast_bf16", "has_video_processor", "pick_attention",
           "image_only_class"]


def pick_attention(device: str | torch.device) -> str:
    """``flash_attention_2`` on CUDA when flash-attn is installed, else ``sdpa``."""
    if torch.device(device).type == "cuda":
        try:
            import flash_attn  # noqa: F401
            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AMX or AVX512-BF16 in its
    flags, Linux); elsewhere bfloat16 is emulated and slower than float32."""
    try:
        with open(cpuinfo, encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_dtype(requested: str = "auto") -> torch.dtype:
    """The dtype for a model on the CPU: ``"float32"``, ``"bfloat16"``, or ``"auto"`` (bfloat16
    where :func:`cpu_has_fast_bf16`: on such a CPU it halves the weights' memory and, in
    measurements here, cut LLaVA-OneVision-0.5B's prefill about threefold; float32 elsewhere)."""
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if requested == "auto":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if requested not in choices:
        raise ValueError(f"CPU dtype must be auto, float32 or bfloat16; got {requested!r}")
    return choices[requested]


def load_model(
    name_or_path: str | os.PathLike,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """``(model, processor)`` in eval mode. float32 on CPU, bfloat16 on CUDA unless ``dtype``."""
    if dtype is None:
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(
        name_or_path, dtype=dtype, attn_implementation=attn_implementation or pick_attention(device),
        trust_remote_code=trust_remote_code,
    ).to(device).eval()
    return model, load_processor(name_or_path, trust_remote_code=trust_remote_code)


def load_processor(name_or_path: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    try:
        return AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (ImportError, AttributeError, TypeError) as err:
        if has_torchvision():
            raise
        first_error = err
    try:
        return _image_only_processor(name_or_path, trust_remote_code)
    except Exception as err:  # report the original cause too
        raise RuntimeError(f"could not load the processor of {name_or_path}: {first_error}; "
                           f"building it without a video processor also failed: {err}") from err


def has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:
        return False


def has_video_processor(processor: Any) -> bool:
    return getattr(processor, "video_processor", None) is not None


def _image_only_processor(name_or_path: str | os.PathLike, trust_remote_code: bool) -> Any:
    config = _processor_config(name_or_path)
    class_name = config.pop("processor_class", None)
    if class_name is None:
        raise ValueError("no processor_class in processor_config.json")
    processor_class = image_only_class(getattr(transformers, class_name))
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    for key in ("image_processor", "video_processor", "tokenizer", "feature_extractor"):
        config.pop(key, None)
    chat_template = config.pop("chat_template", None) or getattr(tokenizer, "chat_template", None)
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                              chat_template=chat_template, **config)


def image_only_class(base: type) -> type:
    """A subclass of processor class ``base`` that accepts ``video_processor=None``."""

    class ImageOnlyProcessor(base):  # same behaviour for images, no video processor
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def save_pretrained(self, save_directory, **kwargs):
            """Save the parts and a processor_config.json that :func:`load_processor` reads back."""
            folder = Path(save_directory)
            folder.mkdir(parents=True, exist_ok=True)
            self.tokenizer.save_pretrained(folder)
            self.image_processor.save_pretrained(folder)
            extra = {}
            for key in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens",
                        "num_image_tokens", "vision_aspect_ratio"):
                if getattr(self, key, None) is not None:
                    extra[key] = getattr(self, key)
            config = {"processor_class": base.__name__, **extra}
            (folder / "processor_config.json").write_text(json.dumps(config, indent=2))
            if self.chat_template:
                (folder / "chat_template.jinja").write_text(self.chat_template)
            return [str(folder)]

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = base.__name__
    return ImageOnlyProcessor


def _processor_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """processor_config.json (+ chat template) from a folder or the hub cache."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.jinja", "*.txt", "*.model"]))
    config = json.loads((folder / "processor_config.json").read_text()) if (folder / "processor_config.json").exists() else {}
    if "processor_class" not in config:
        for name in ("preprocessor_config.json", "tokenizer_config.json"):
            path = folder / name
            if path.exists() and "processor_class" in (data := json.loads(path.read_text())):
                config["processor_class"] = data["processor_class"]
                break
    template = folder / "chat_template.jinja"
    if template.exists() and "chat_template" not in config:
        config["chat_template"] = template.read_text()
    return config
