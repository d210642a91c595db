"""Safe chat input: uploaded images decoded within limits and converted to 8-bit RGB, questions checked
(length, the model's control tokens), multi-turn chat inputs for any supported processor, and page
messages free of server paths.

Everything here raises :class:`ChatInputError` with a message meant for the page.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ChatInputError", "load_image", "check_prompt", "check_special_tokens", "build_messages", "build_inputs",
           "image_region", "public_text", "MAX_PROMPT_CHARS", "MAX_IMAGE_SIDE", "MAX_IMAGE_PIXELS", "MAX_DECODE_BYTES"]

MAX_PROMPT_CHARS = 1000
MAX_IMAGE_SIDE = 2048          # larger images are downscaled before the processor sees them
MAX_IMAGE_PIXELS = 50_000_000  # PIL decompression-bomb limit applied while decoding uploads
MAX_DECODE_BYTES = 160 * 2 ** 20  # what one decoded picture may take in memory (pixels × bytes per pixel)


class ChatInputError(ValueError):
    """Bad user input; the message is meant for the page."""


def load_image(source: str | os.PathLike | Image.Image | None, max_side: int = MAX_IMAGE_SIDE,
               max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Image.Image, list[str]]:
    """Decode an upload safely: ``(RGB image, notes)``. Raises :class:`ChatInputError` for a
    missing, corrupt or non-image file and for an image above the decompression-bomb limit;
    downscales (and says so in ``notes``) an image whose longer side exceeds ``max_side``."""
    if source is None or (isinstance(source, str) and not source.strip()):
        raise ChatInputError("No image: upload an image (or pick an example) before asking a question.")
    notes: list[str] = []
    image = source if isinstance(source, Image.Image) else _decode_file(Path(source), max_side, max_pixels, notes)
    if isinstance(source, Image.Image) and getattr(image, "n_frames", 1) > 1:
        notes.append("Animated image: only its first frame is used.")
    w, h = image.size
    if w < 2 or h < 2:
        raise ChatInputError(f"The image is only {w}×{h} pixels; upload a larger one.")
    if max(w, h) > max_side:  # first, in the picture's own mode: nothing is converted at full size
        image = _shrink(image, max_side)
        notes.append(f"The image was {w}×{h} pixels; it was downscaled to {image.width}×{image.height}.")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF: keep the pixels as stored
        pass
    return _to_rgb(image, notes), notes


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` with its longer side brought down to ``max_side``, resampled in its own mode where
    PIL can (16-bit, 32-bit, float, RGBA, …), so that no full-size converted copy is ever made."""
    w, h = image.size
    scale = max_side / max(w, h)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    elif image.mode == "1":
        image = image.convert("L")
    try:
        return image.resize(size, Image.Resampling.LANCZOS)
    except ValueError:  # a mode PIL cannot resample (CMYK and the like): convert, then shrink
        return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def _decoded_bytes(image: Image.Image) -> int:
    """What PIL holds for ``image`` once decoded: 1 byte per pixel for 1/L/P, 2 for 16-bit greyscale,
    4 for everything else (RGB is stored in 4 bytes too)."""
    per_pixel = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    return image.width * image.height * per_pixel


def _decode_file(path: Path, max_side: int, max_pixels: int, notes: list[str]) -> Image.Image:
    """The first frame of an image file, refused above ``max_pixels`` or :data:`MAX_DECODE_BYTES`
    (from its header, before any pixel is decoded)."""
    if not path.is_file():
        raise ChatInputError(f"The image file {path.name!r} could not be found; upload it again.")
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                w, h = opened.size
                if w * h > max_pixels:
                    raise Image.DecompressionBombError(f"{w * h} pixels")
                if getattr(opened, "n_frames", 1) > 1:  # before copy(): a copy is one frame
                    notes.append("Animated image: only its first frame is used.")
                opened.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced size
                if _decoded_bytes(opened) > MAX_DECODE_BYTES:
                    raise ChatInputError(
                        f"This image is too large to decode safely: {w}×{h} pixels in {opened.mode} would take "
                        f"{_decoded_bytes(opened) / 2 ** 20:.0f} MB, over the {MAX_DECODE_BYTES / 2 ** 20:.0f} MB "
                        "one picture may take. Please upload a smaller image.")
                image = opened.copy()
                image.load()
                return image
    except ChatInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ChatInputError(
            f"This image is too large to decode safely (over {max_pixels / 1e6:.0f} megapixels, the "
            "decompression-bomb limit). Please upload a smaller image.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ChatInputError(
            f"{path.name!r} is not a readable image. Upload a PNG, JPEG, WebP, GIF or BMP file.") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """8-bit RGB: transparency over white; 16-bit, 32-bit and float pixels scaled to 8 bits by the
    values they really hold (PIL's own conversion clips them to all-white or all-black)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "La", "PA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        return _high_depth_to_rgb(image, notes)
    try:
        return image.convert("RGB")
    except ValueError:
        raise ChatInputError(f"Images in the {image.mode} colour mode are not supported; upload an RGB "
                             "or greyscale image.") from None


def _high_depth_to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """A greyscale image of more than 8 bits (``I;16``, ``I``, ``F``) as 8-bit RGB, stretched from its
    lowest to its highest finite value."""
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ChatInputError("The image holds no finite pixel values; upload another image.")
    low, high = float(finite.min()), float(finite.max())
    scaled = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) / ((high - low) or 1.0)
    grey = Image.fromarray(np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8), mode="L")
    kind = "floating-point" if image.mode == "F" else "high bit depth (16/32-bit)"
    notes.append(f"The image has {kind} greyscale pixels; it was scaled to 8 bits from its value range "
                 f"{low:g} to {high:g}.")
    return grey.convert("RGB")


def check_special_tokens(question: str, processor: Any) -> str:
    """``question`` unchanged, or :class:`ChatInputError` if it contains one of the model's control
    tokens (``<image>``, ``<|im_start|>``, ``</s>``, …): they would be read as markup, not text."""
    found = sorted(t for t in _control_tokens(processor) if t in question)
    if found:
        shown = ", ".join(repr(t) for t in found[:3])
        raise ChatInputError(f"The question contains {shown}, which this model reads as a control token, not "
                             "as text. Please rephrase it without that token.")
    return question


def _control_tokens(processor: Any) -> set[str]:
    """The tokenizer's special and added special tokens, and the processor's image/video tokens."""
    tokenizer = getattr(processor, "tokenizer", processor)
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            tokens.add(str(added.content))
    for owner in (processor, tokenizer):
        for name in ("image_token", "video_token", "boi_token", "eoi_token"):
            value = getattr(owner, name, None)
            if isinstance(value, str):
                tokens.add(value)
    return {t for t in tokens if t and len(t) > 1}


def check_prompt(text: str | None, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """The question, stripped; :class:`ChatInputError` if it is no text, empty or too long (its length,
    not its text, is said)."""
    if text is not None and not isinstance(text, str):
        raise ChatInputError("The question must be text.")
    question = (text or "").strip()
    if not question:
        raise ChatInputError("The question is empty: type a question about the image.")
    if len(question) > max_chars:
        raise ChatInputError(f"The question is {len(question)} characters long; the limit is {max_chars}. "
                             "Please shorten it.")
    return question


def build_messages(turns: Sequence[tuple[str, str]], question: str) -> list[dict[str, Any]]:
    """Chat messages for a conversation about one image: the image goes with the first user turn.
    ``turns`` are earlier ``(question, answer)`` pairs of the same run."""
    messages: list[dict[str, Any]] = []
    for i, (q, a) in enumerate([*turns, (question, None)]):
        content: list[dict[str, Any]] = [{"type": "image"}] if i == 0 else []
        content.append({"type": "text", "text": q})
        messages.append({"role": "user", "content": content})
        if a is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    return messages


def build_inputs(processor: Any, turns: Sequence[tuple[str, str]], question: str, image: Image.Image) -> Any:
    """Tokenised multi-turn prompt + pixel values for any supported processor (batch of 1)."""
    text = processor.apply_chat_template(build_messages(turns, question), add_generation_prompt=True,
                                         tokenize=False)
    return processor(images=[image], text=[text], return_tensors="pt")


def image_region(processor: Any, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box ``(x0, y0, x1, y1)`` of the original image that the patch grid covers: the centre
    crop for processors that resize the short side and centre-crop (CLIP-style LLaVA-1.5); the
    whole image for those that resize the whole image (SigLIP, LLaVA-NeXT/OneVision, Qwen2-VL)."""
    w, h = image_size
    ip = getattr(processor, "image_processor", None)
    anyres = getattr(ip, "image_grid_pinpoints", None)  # NeXT: its tiles are already crop-sized, the crop is a no-op
    if ip is not None and not anyres and getattr(ip, "do_center_crop", False) and getattr(ip, "crop_size", None):
        crop, size = ip.crop_size, getattr(ip, "size", None)
        cw, ch = (_field(crop, "width"), _field(crop, "height")) if not isinstance(crop, int) else (crop, crop)
        short = _field(size, "shortest_edge")
        if cw and ch and short:
            scale = short / min(w, h)
            bw, bh = min(w, cw / scale), min(h, ch / scale)
            x0, y0 = (w - bw) / 2, (h - bh) / 2
            return (x0, y0, x0 + bw, y0 + bh)
    return (0.0, 0.0, float(w), float(h))


def _field(obj: Any, key: str) -> Any:
    """A key of a size dict (plain dict or transformers' SizeDict)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"<>|:]+)+[\\/]?|~[\\/][^\s'\"]*")


def public_text(text: str, path: str | os.PathLike | None = None) -> str:
    """``text`` fit for the page: ``path`` becomes its file name, any other absolute path or home-relative
    path becomes "(a server path)", and Python exception class names (``…Error:``) are dropped."""
    if path is not None:
        text = text.replace(str(path), Path(path).name)
    text = _PATH.sub(lambda m: m.group(0) if m.group(0).count("/") + m.group(0).count("\\") < 2
                     else "(a server path)", text)
    text = re.sub(r"\b[A-Z][A-Za-z]*(?:Error|Exception|Warning)\b:?\s*", "", text)
    return text.strip() or "the file could not be read"
