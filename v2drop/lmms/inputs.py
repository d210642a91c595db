"""Model inputs for lmms-eval requests: the request's text and visuals in the model's chat format.

lmms-eval hands a "simple" model a context string and a list of visuals per request (PIL images
for image tasks, file paths for video tasks). Every supported family's processor knows its own
chat template, so a request becomes one user turn: the images first, then the text, as
``shapes.evaluate`` and the hub model cards prompt them. Batches are left-padded so that
generation continues every row from its last prompt token.
"""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image

__all__ = ["IMAGE_PLACEHOLDER", "strip_placeholders", "chat_text", "image_batch", "is_video"]

#: LLaVA-style tasks write this into the context; the chat template places the images itself
IMAGE_PLACEHOLDER = "<image>"


def strip_placeholders(context: str) -> str:
    """The context without ``<image>`` markers (and the blank line a leading one leaves)."""
    return context.replace(IMAGE_PLACEHOLDER, "").strip() if IMAGE_PLACEHOLDER in context else context


def chat_text(processor: Any, context: str, num_images: int) -> str:
    """One user turn holding ``num_images`` images and then ``context``, with the generation prompt."""
    content = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": strip_placeholders(context)})
    return processor.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=False)


def image_batch(processor: Any, contexts: Sequence[str], images: Sequence[Sequence[Image.Image]]) -> Any:
    """Processor output (``BatchFeature``) for a left-padded batch of image requests."""
    texts = [chat_text(processor, c, len(imgs)) for c, imgs in zip(contexts, images)]
    flat = [img.convert("RGB") for imgs in images for img in imgs]
    tokenizer = processor.tokenizer
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return processor(images=flat or None, text=texts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = old_side


def is_video(visual: Any) -> bool:
    """lmms-eval's video tasks pass a file path (a string); image tasks pass PIL images."""
    return isinstance(visual, str)
