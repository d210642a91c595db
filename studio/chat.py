"""The model side of the side-by-side chat in one import, for notebooks and scripts. Nothing here
(or in the modules it gathers) knows about Gradio; ``app.py`` and ``studio/handlers.py`` are the page.

- :mod:`studio.inputs`: safe image and question input, multi-turn chat inputs, path-free messages;
- :mod:`studio.videos`: video upload decoding, the app's video limits, video chat inputs;
- :mod:`studio.pair`: :func:`stream_pair`, the interleaved unpruned / V²Drop answer;
- :mod:`studio.schedules`: presets for a model and a schedule's predicted budget;
- :mod:`studio.registry`: :class:`ModelRegistry`, the model cache, and :class:`ModelCard`.

Typical use::

    from studio.chat import ModelRegistry, load_image, stream_pair
    registry = ModelRegistry()
    entry = registry.embedded()
    image, notes = load_image("assets/examples/shapes_0_color.png")
    for event in stream_pair(entry.model, entry.processor, image, "what color is the star ?",
                             [], [], DropSchedule.preset("shapes-50%")):
        print(event.full_text, "|", event.drop_text)
    event.trace        # the V²Drop run's Trace (trace_all_layers=True), event.full / event.drop: RunStats
"""

from __future__ import annotations

from studio.inputs import (MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_PROMPT_CHARS, ChatInputError, build_inputs,
                           build_messages, check_prompt, check_special_tokens, image_region, load_image, public_text)
from studio.pair import DEFAULT_MAX_NEW_TOKENS, PairEvent, RunStats, stream_pair
from studio.registry import EMBEDDED_ID, SUGGESTED_MODELS, LoadedModel, ModelCard, ModelLoadError, ModelRegistry
from studio.schedules import nominal_vision_tokens, num_decoder_layers, presets_for, schedule_summary
from studio.videos import (APP_VIDEO_LIMITS, MAX_VIDEO_FRAMES, VIDEO_MODELS, build_video_inputs, build_video_messages,
                           check_num_frames, check_video_model, load_video_file)

__all__ = [
    "ChatInputError", "ModelLoadError", "RunStats", "PairEvent", "LoadedModel", "ModelCard", "ModelRegistry",
    "load_image", "check_prompt", "check_special_tokens", "build_messages", "build_inputs", "image_region",
    "public_text", "stream_pair", "EMBEDDED_ID", "SUGGESTED_MODELS", "presets_for", "schedule_summary",
    "nominal_vision_tokens", "num_decoder_layers", "load_video_file", "check_video_model", "check_num_frames",
    "build_video_messages", "build_video_inputs", "VIDEO_MODELS", "MAX_VIDEO_FRAMES", "APP_VIDEO_LIMITS",
    "MAX_PROMPT_CHARS", "MAX_IMAGE_SIDE", "MAX_IMAGE_PIXELS", "DEFAULT_MAX_NEW_TOKENS",
]
