"""The *Mark what matters* editor: Gradio's ImageEditor, decoding only what a mark needs.

Gradio's own ImageEditor decodes every image of a payload (background, each layer, composite)
before a handler sees it, whatever their number and size. A visitor can send any payload through
the API, so :class:`MarkEditor` decodes the layers only (a mark is their painted pixels), at most
:data:`MAX_LAYERS` of them, each refused from its header (before any pixel is decoded) when it is
larger than the largest picture the app keeps (:data:`~studio.inputs.MAX_IMAGE_SIDE` squared). Files
still reach it only through Gradio's upload route (Gradio refuses any other path first).

The page sends a stroke's layers first as blobs (the editor's ``accept_blobs`` server function,
which any visitor can call with any id) and then the event with their id; blobs whose event never
comes would stay forever, so at most :data:`MAX_PENDING` of them, :data:`MAX_PENDING_BYTES` in all,
are kept (the oldest go first).

``studio/editor.pyi`` is the typing stub that Gradio writes next to every component class it
imports (the class's event methods); it is kept in the repository, as Gradio's custom components do.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import gradio as gr
from fastapi import HTTPException
import numpy as np
from gradio.components.base import server
from gradio.components.image_editor import AcceptBlobs
from gradio.data_classes import FileData
from PIL import Image, UnidentifiedImageError

from studio.inputs import MAX_IMAGE_SIDE
from studio.marks import BRUSH_COLOUR, brush_size

__all__ = ["MarkEditor", "mark_brush", "MAX_LAYERS", "MAX_LAYER_PIXELS", "MAX_PENDING", "MAX_PENDING_BYTES"]

MAX_LAYERS = 4                              # the page sends one
MAX_LAYER_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
MAX_PENDING = 32                            # blob payloads waiting for their event, per editor instance
MAX_PENDING_BYTES = 64 * 1024 * 1024
UNREADABLE = "The mark could not be read: paint it again on the picture."


def mark_brush(image_size: tuple[int, int] | None = None) -> gr.Brush:
    """The editor's one brush: the outlines' cyan, sized for the picture."""
    return gr.Brush(default_size=brush_size(image_size), colors=[BRUSH_COLOUR], color_mode="fixed")


class MarkEditor(gr.ImageEditor):
    """An ImageEditor whose input is ``{"background": None, "layers": [RGBA arrays], "composite": None}``."""

    def get_block_name(self) -> str:
        return "imageeditor"  # the same front end as gr.ImageEditor

    def preprocess(self, payload: Any) -> dict | None:
        if payload is None:
            return None
        if payload.id is not None:  # the page sends its layers as blobs first, then their id
            blobs = self.blob_storage.pop(payload.id, None)
            layers = list(blobs.layers) if blobs is not None else []
        else:
            layers = list(payload.layers)
        layers = [layer for layer in layers if layer is not None]
        if len(layers) > MAX_LAYERS:
            raise gr.Error(f"A mark has at most {MAX_LAYERS} layers.")
        return {"background": None, "layers": [_decode_layer(layer) for layer in layers], "composite": None}

    @server
    def accept_blobs(self, data: AcceptBlobs) -> None:
        """Gradio's blob store for a stroke, bounded by count and bytes: a layer index beyond
        :data:`MAX_LAYERS` is refused before Gradio pads the layer list up to it, background and
        composite blobs (never read) are not kept, and the oldest pending payloads go first."""
        fields = data.data if isinstance(data.data, dict) else {}
        if fields.get("type") != "layer":
            return None
        index, key = str(fields.get("index", "")), fields.get("id")
        if not (index.isdigit() and int(index) < MAX_LAYERS and isinstance(key, str) and 0 < len(key) <= 64
                and len(data.files) == 1):
            raise HTTPException(status_code=400, detail=f"A mark has at most {MAX_LAYERS} layers, sent one at a time.")
        super().accept_blobs(data)
        sizes = {key: sum(len(part or b"") for part in (blobs.background, blobs.composite, *blobs.layers))
                 for key, blobs in self.blob_storage.items()}
        while self.blob_storage and (len(self.blob_storage) > MAX_PENDING or sum(sizes.values()) > MAX_PENDING_BYTES):
            oldest = next(iter(self.blob_storage))
            self.blob_storage.pop(oldest)
            sizes.pop(oldest)


def _decode_layer(layer: FileData | bytes) -> np.ndarray:
    """One layer as an RGBA array; refused from its header when too large, or when unreadable."""
    source = layer.path if isinstance(layer, FileData) else io.BytesIO(layer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                too_large = image.width * image.height > MAX_LAYER_PIXELS
                pixels = None if too_large else np.asarray(image.convert("RGBA"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning):
        raise gr.Error(UNREADABLE) from None
    if too_large:
        raise gr.Error(f"The mark is larger than {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} pixels: paint it on the picture "
                       "in the editor.")
    return pixels
