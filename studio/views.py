"""What the page draws from a session's last run: the layer overlays (on the image, or as strips of
the video's frames), the charts, the table, the story and the trace file, as one :class:`Visuals`.

The handlers choose *when* to draw; this module only draws, from a :class:`Media` (what the run was
about) and the run's :class:`~v2drop.trace.Trace`. The image overlays outline ``Media.marked``, the
tokens that matter (ground truth or the visitor's mark), and the what-matters chart is drawn from
the data kept in the session's state (:func:`studio.matters.chart_of`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import gradio as gr
from PIL import Image

from v2drop.trace import SampleTrace, Trace
from v2drop.video import DecodedVideo
from studio.matters import chart_of
from visualize import charts, overlay, story

__all__ = ["Media", "Visuals", "VISUAL_FIELDS", "STRIP_PER_ROW", "run_visuals", "layer_images", "dropped_image",
           "layer_caption"]

STRIP_PER_ROW = 4  # frame tiles per row of a video's strips


@dataclass
class Media:
    """What a run was about: an image (with the region its patch grid covers) or sampled video frames."""

    image: Image.Image | None = None
    region: tuple[float, float, float, float] | None = None
    video: DecodedVideo | None = None
    video_step: int = 1
    marked: list[int] | None = None      # the tokens that matter, outlined on the image overlays


@dataclass
class Visuals:
    """Every output drawn from the last run, in the order the page wires them (:data:`VISUAL_FIELDS`)."""

    layer: Any
    drop_layer: Any
    kept: Any
    heat: Any
    dropped: Any
    perf: Any
    alive: Any
    table: Any
    retention: Any
    story: Any
    trace_file: Any
    timeline: Any
    matters: Any = None          # the what-matters chart
    matters_note: Any = ""       # what it follows, or how to get it

    @classmethod
    def unchanged(cls) -> "Visuals":
        return cls(*(gr.skip() for _ in fields(cls)))

    @classmethod
    def cleared(cls) -> "Visuals":
        """Nothing drawn: after a model load, or when there is no run to show."""
        return cls(gr.Slider(value=0), gr.Dropdown(choices=[], value=None), None, None, None, None, None, None,
                   None, story.how_it_works(), None, gr.Plot(value=None, visible=False), None, "")

    def values(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))


VISUAL_FIELDS = tuple(f.name for f in fields(Visuals))


def draw(media: Media, sample: SampleTrace, layer: int, mode: str) -> Image.Image:
    """One overlay: on the image, or (video) a strip of its sampled frames."""
    if media.video is not None:
        return overlay.frame_strip(media.video.frames, sample, layer, mode, step=media.video_step,
                                   timestamps=media.video.timestamps, per_row=STRIP_PER_ROW, legend=True)
    painter = {"kept": overlay.kept_overlay, "dropped": overlay.dropped_overlay,
               "variation": overlay.variation_heatmap}[mode]
    return painter(media.image, sample, layer, media.region, outline=media.marked, legend=True)


def layer_images(media: Media, sample: SampleTrace, layer: int) -> tuple[Image.Image, Image.Image | None]:
    """(kept/dropped overlay, variation heatmap) at ``layer``; no heatmap where there is no variation."""
    kept = draw(media, sample, layer, "kept")
    try:
        heat = draw(media, sample, layer, "variation")
    except ValueError:  # layer 0: nothing to compare with
        heat = None
    return kept, heat


def dropped_image(media: Media, sample: SampleTrace, layer: int) -> Image.Image:
    return draw(media, sample, layer, "dropped")


def layer_caption(sample: SampleTrace, layer: int, has_heatmap: bool) -> str:
    alive, dropped_now = overlay.layer_status(sample, layer)
    caption = f"Layer {layer}: {len(alive)} of {sample.num_vision_tokens} vision tokens alive"
    if dropped_now:
        caption += f"; **{len(dropped_now)} dropped right before this layer** (red)"
    if not has_heatmap:
        caption += " · no variation at layer 0 (no previous layer to compare with)"
    return caption


def run_visuals(trace: Trace, stats: dict, media: Media, trace_file: str, matters: dict | None = None,
                matters_note: str = "") -> Visuals:
    """Everything drawn after a run: the last drop layer's overlays, the first drop layer's dropped
    patches, the charts and table, the story, the trace file, (video) the frame timeline, and the
    what-matters chart from ``matters`` (the state's data) with its note."""
    sample = trace.samples[0]
    drops = sorted(sample.kept)
    layer = drops[-1] if drops else 0
    first_drop = drops[0] if drops else None
    kept, heat = layer_images(media, sample, layer)
    timeline = gr.Plot(value=None, visible=False)  # an image run has no frames: no empty timeline either
    if media.video is not None:
        timeline = gr.Plot(value=charts.frame_timeline(trace, step=media.video_step,
                                                       timestamps=media.video.timestamps,
                                                       num_frames=len(media.video)), visible=True)
    return Visuals(
        layer=gr.Slider(minimum=0, maximum=trace.num_layers - 1, value=layer, step=1),
        drop_layer=gr.Dropdown(choices=[(f"layer {d}", d) for d in drops], value=first_drop),
        kept=kept, heat=heat,
        dropped=dropped_image(media, sample, first_drop) if first_drop is not None else None,
        perf=charts.performance_chart(stats["full"], stats["drop"]), alive=charts.alive_chart(trace),
        table=charts.metrics_rows(stats["full"], stats["drop"]), retention=charts.retention_chart([sample]),
        story=story.how_it_works() + "\n\n" + story.run_story(trace), trace_file=trace_file, timeline=timeline,
        matters=chart_of(matters), matters_note=matters_note)
