"""One visitor's page state (``gr.State``): small, named fields only.

Heavy things live elsewhere, bounded and per session: the image and the trace as files in the
session's folder (:class:`studio.sessions.SessionStore`), decoded video frames in
:class:`studio.sessions.FrameCache`. ``gr.State(PageState, …)`` builds a fresh one for every session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from studio.registry import EMBEDDED_ID

__all__ = ["PageState"]


@dataclass
class PageState:
    """What the page remembers between events for one browser session."""

    model_id: str = EMBEDDED_ID
    trust_remote_code: bool = False
    schedule: str = ""
    media: str = "image"                     # what the chat is about: "image" or "video"
    image: str | None = None                 # the session's own PNG copy of the image
    image_src: str | None = None             # the upload it came from (to notice a new one)
    video: str | None = None                 # the session's own copy of the video file
    video_src: str | None = None             # the upload it came from
    num_frames: int = 8
    video_step: int = 1                      # sampled frames per trace layout frame
    turns_full: list[tuple[str, str]] = field(default_factory=list)
    turns_drop: list[tuple[str, str]] = field(default_factory=list)
    trace_file: str | None = None            # the last run's trace (JSON) in the session's folder
    stats: dict | None = None                # {"full": RunStats dict, "drop": …, "schedule", "model_id"}
    region: tuple[float, float, float, float] | None = None
    last_vision_tokens: int | None = None
    session_key: str | None = None           # Gradio's session hash, for the clean-up callbacks
    truth: str | None = None                 # the gallery scene this picture is (found by its pixels)
    mark_file: str | None = None             # the visitor's mark of what matters (a mask PNG in the session's folder)
    box_corner: tuple[float, float] | None = None  # first corner of a box being clicked on the picture
    baseline: str = "none"                   # the baseline the what-matters chart adds (studio.matters.BASELINES)
    baseline_file: str | None = None         # its trace for the last run (JSON in the session's folder)
    matters: dict | None = None              # the what-matters chart's data for the last run (studio.matters)
    upload_error: str | None = None          # why the last upload was refused (shown beside the upload box too)
    video_error: str | None = None           # the same for the last video upload
    turn_notes: list[tuple[str, str]] = field(default_factory=list)  # per turn: (unpruned, V²Drop) truth + schedule
    summary: str = ""                        # the last run's summary: expected answer, right/wrong, the reason
    seed: int | None = None                  # the random baseline's seed for the last run (fresh per run)
    layer_sweep: dict | None = None          # the last one-click drop-layer sweep (studio.layer_sweep)

    def new_chat(self) -> None:
        """Forget the conversation and the last run (the image / video, its mark and the picked
        baseline stay)."""
        self.turns_full, self.turns_drop = [], []
        self.trace_file, self.stats = None, None
        self.baseline_file, self.matters = None, None
        self.turn_notes, self.summary, self.layer_sweep = [], "", None

    @property
    def has_media(self) -> bool:
        return bool(self.video if self.media == "video" else self.image)
