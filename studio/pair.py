"""The side-by-side answer: the unpruned model and the same model under V²Drop answer one question,
interleaved step by step (unpruned prefill, V²Drop prefill, then one greedy decode step of each in
turn), so both first tokens appear early. The unpruned steps run inside ``session.paused()`` of the
same :func:`v2drop.apply` session: same weights, hooks out, their own KV cache. Both answers equal
what ``generate`` gives.

    for event in stream_pair(model, processor, image, "what color is the star ?", [], [], "2:0.5,4:0.5"):
        print(event.full_text, "|", event.drop_text)
    event.trace        # the V²Drop run's Trace (trace_all_layers=True); event.full / event.drop: RunStats
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image

from studio.inputs import build_inputs
from studio.videos import build_video_inputs, check_video_model
from v2drop.compat import kv_cache_bytes
from v2drop.encoder_cache import shared_encoder_outputs
from v2drop.engine import apply
from v2drop.memory import memory_now, module_device
from v2drop.schedule import DropSchedule
from v2drop.trace import Trace
from v2drop.video import DecodedVideo

__all__ = ["RunStats", "PairEvent", "stream_pair", "prefill_trace", "DEFAULT_MAX_NEW_TOKENS"]

DEFAULT_MAX_NEW_TOKENS = 48  # answer length when the caller does not say
MIN_DECODE_STEPS = 8         # fewer decode steps than this give no decode speed (one step is mostly noise)


@dataclass
class RunStats:
    """Timings and memory of one of the two runs.

    Both runs share one request and take turns, so a wall clock since the request would charge the
    V²Drop run for the unpruned prefill that ran before it. Each run's ``first_token_seconds`` is
    therefore its own: the time to build its inputs plus its prefill (``inputs_seconds +
    prefill_seconds``), whatever the other run did meanwhile; ``first_shown_seconds`` is the wall
    clock at which its first token appeared on the page."""

    name: str
    prompt_tokens: int = 0
    vision_tokens: int = 0
    tokens: int = 0                       # generated tokens (the end-of-turn token included)
    inputs_seconds: float = 0.0           # building this run's model inputs (processor)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    first_token_seconds: float | None = None   # this run's own time to its first token (inputs + prefill)
    first_shown_seconds: float | None = None   # since the request started (wall clock, both runs interleaved)
    done_seconds: float | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str = ""
    kv_cache_bytes: int | None = None

    @property
    def total_seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds

    @property
    def decode_steps(self) -> int:
        """Decode steps taken (the first token comes from the prefill)."""
        return max(0, self.tokens - 1)

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Decode speed, or None when fewer than :data:`MIN_DECODE_STEPS` steps ran (too short to
        measure: a one-word answer is one step, dominated by timer and scheduling noise)."""
        steps = self.decode_steps
        return steps / self.decode_seconds if steps >= MIN_DECODE_STEPS and self.decode_seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_seconds"] = self.total_seconds
        data["decode_steps"] = self.decode_steps
        data["decode_tokens_per_second"] = self.decode_tokens_per_second
        data["min_decode_steps"] = MIN_DECODE_STEPS
        return data


@dataclass
class PairEvent:
    """One streaming update: both answers so far, their stats, and (at the end) the trace."""

    full_text: str
    drop_text: str
    full_done: bool
    drop_done: bool
    full: RunStats
    drop: RunStats
    trace: Trace | None
    elapsed: float
    schedule: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.full_done and self.drop_done


def _to_device(inputs: Any, model: torch.nn.Module) -> dict[str, Any]:
    device = module_device(model)
    dtype = next(model.parameters()).dtype
    out = {}
    for key, value in dict(inputs).items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


def _eos_ids(model: torch.nn.Module, processor: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    tok = getattr(processor, "tokenizer", processor)
    if getattr(tok, "eos_token_id", None) is not None:
        ids.add(int(tok.eos_token_id))
    return ids


def _media_inputs(processor: Any, turns: Sequence[tuple[str, str]], question: str,
                  media: "Image.Image | DecodedVideo") -> Any:
    if isinstance(media, DecodedVideo):
        return build_video_inputs(processor, turns, question, media)
    return build_inputs(processor, turns, question, media)


@dataclass
class _Run:
    """One of the two runs: its inputs, tokens so far, KV cache and stats."""

    stats: RunStats
    inputs: dict[str, Any]
    ids: list[int] = field(default_factory=list)
    next_token: torch.Tensor | None = None
    cache: Any = None
    done: bool = False


class _PairRunner:
    """Steps the two runs of one question; :func:`stream_pair` drives it."""

    def __init__(self, model: torch.nn.Module, processor: Any, media: "Image.Image | DecodedVideo", question: str,
                 history_full: Sequence[tuple[str, str]], history_drop: Sequence[tuple[str, str]],
                 schedule: DropSchedule, max_new_tokens: int) -> None:
        self.model, self.schedule, self.max_new_tokens = model, schedule, max_new_tokens
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.device = module_device(model)
        self.eos = _eos_ids(model, processor)
        self.encoders: dict[str, Any] = {}   # shared vision-tower memos (v2drop.encoder_cache), set by stream_pair
        self.start = time.perf_counter()
        self.full = self._new_run("unpruned", processor, history_full, question, media)
        self.drop = self._new_run("V²Drop", processor, history_drop, question, media)
        self.vision_ids: torch.Tensor | None = None  # the engine's, set once the session is open

    def _new_run(self, name: str, processor: Any, history: Sequence[tuple[str, str]], question: str,
                 media: "Image.Image | DecodedVideo") -> _Run:
        """One run with its inputs built (and the time that took charged to it alone)."""
        t0 = time.perf_counter()
        inputs = _to_device(_media_inputs(processor, history, question, media), self.model)
        return _Run(RunStats(name, inputs_seconds=time.perf_counter() - t0), inputs)

    def text_of(self, run: _Run) -> str:
        return self.tokenizer.decode([t for t in run.ids if t not in self.eos], skip_special_tokens=True).strip()

    def event(self, trace: Trace | None = None) -> PairEvent:
        return PairEvent(self.text_of(self.full), self.text_of(self.drop), self.full.done, self.drop.done,
                         replace(self.full.stats), replace(self.drop.stats), trace, time.perf_counter() - self.start,
                         str(self.schedule))

    def _step_inputs(self, run: _Run, prefill: bool) -> dict[str, Any]:
        if not prefill:
            return {"input_ids": run.next_token.view(1, 1)}
        from transformers import DynamicCache

        run.cache = DynamicCache(config=self.model.config)
        run.stats.prompt_tokens = int(run.inputs["input_ids"].shape[1])
        if self.vision_ids is not None:
            run.stats.vision_tokens = int(torch.isin(run.inputs["input_ids"][0], self.vision_ids.to(self.device)).sum())
        return dict(run.inputs)

    def step(self, run: _Run, prefill: bool) -> None:
        """One forward pass of ``run`` (its prefill, or one decode step) and its bookkeeping."""
        kwargs = self._step_inputs(run, prefill)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            if prefill and run is self.full:
                torch.cuda.reset_peak_memory_stats(self.device)
        saved = self._encoder_seconds_saved()
        t0 = time.perf_counter()
        with torch.inference_mode():  # per step: grad mode is thread-local and a streaming caller
            out = self.model(**kwargs, cache=run.cache, use_cache=True, logits_to_keep=1)  # may resume us elsewhere
        token = int(out.logits[0, -1].argmax())
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if prefill:  # a reused vision-tower output still counts: both answers' prefills stay comparable
            run.stats.prefill_seconds += elapsed + self._encoder_seconds_saved() - saved
        else:
            run.stats.decode_seconds += elapsed
        self._record(run, token)

    def _encoder_seconds_saved(self) -> float:
        return sum(memo.saved_seconds for memo in self.encoders.values())

    def _record(self, run: _Run, token: int) -> None:
        stats = run.stats
        run.ids.append(token)
        run.next_token = torch.tensor([token], device=self.device)
        stats.tokens = len(run.ids)
        if stats.first_token_seconds is None:  # the prefill's token: this run's own time to it
            stats.first_token_seconds = stats.inputs_seconds + stats.prefill_seconds
            stats.first_shown_seconds = time.perf_counter() - self.start
        peak, kind = memory_now(self.device)
        if peak is not None:
            stats.peak_memory_bytes = max(stats.peak_memory_bytes or 0, peak)
            stats.memory_kind = kind
        stats.kv_cache_bytes = kv_cache_bytes(run.cache)  # the DynamicCache we passed, filled in place
        if token in self.eos or len(run.ids) >= self.max_new_tokens:
            run.done = True
            stats.done_seconds = time.perf_counter() - self.start

    def take_engine_numbers(self, trace: Trace) -> None:
        """The engine's own memory numbers for the V²Drop run (same clock, measured inside its hooks)."""
        drop = self.drop.stats
        if trace.peak_memory_bytes is not None:
            drop.peak_memory_bytes, drop.memory_kind = trace.peak_memory_bytes, trace.memory_kind
        if trace.kv_cache_bytes is not None:
            drop.kv_cache_bytes = trace.kv_cache_bytes

    def finish(self, trace: Trace) -> PairEvent:
        self.full.done = self.drop.done = True  # (also when cancelled)
        final = self.event(trace)
        self.full.cache = self.drop.cache = None
        return final


def stream_pair(
    model: torch.nn.Module,
    processor: Any,
    image: "Image.Image | DecodedVideo",
    question: str,
    history_full: Sequence[tuple[str, str]],
    history_drop: Sequence[tuple[str, str]],
    schedule: DropSchedule | str,
    *,
    method: str = "v2drop",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    trace_all_layers: bool = True,
    cancel: Callable[[], bool] | None = None,
) -> Iterator[PairEvent]:
    """Answer ``question`` with the unpruned model and with V²Drop, interleaved step by step.

    Each run continues its own conversation (``history_full`` / ``history_drop``: earlier
    ``(question, answer)`` pairs), so multi-turn chats stay side by side. Yields a
    :class:`PairEvent` after each prefill and each decode step; the last one has ``done`` set
    and carries the V²Drop :class:`Trace`.

    ``image`` is a PIL image or a :class:`~v2drop.video.DecodedVideo` (from
    :func:`studio.videos.load_video_file`; the model must take video, see
    :func:`studio.videos.check_video_model`): the video goes with the first user turn, and the
    trace's layout has one frame per token grid (``frames_per_layout_frame`` sampled frames each)."""
    schedule = DropSchedule.parse(schedule) if isinstance(schedule, str) else schedule
    if isinstance(image, DecodedVideo):
        check_video_model(model)
    pair = _PairRunner(model, processor, image, question, history_full, history_drop, schedule, max_new_tokens)
    # one vision-tower pass serves both answers (same pixels); each is still charged its cost
    with shared_encoder_outputs(model) as encoders, \
            apply(model, schedule, method, trace_all_layers=trace_all_layers) as session:
        pair.encoders = encoders
        pair.vision_ids = session.vision_ids
        with session.paused():
            pair.step(pair.full, prefill=True)
        yield pair.event()
        pair.step(pair.drop, prefill=True)
        yield pair.event()
        while not (pair.full.done and pair.drop.done):
            if cancel is not None and cancel():
                break
            if not pair.full.done:
                with session.paused():
                    pair.step(pair.full, prefill=False)
                yield pair.event()
            if not pair.drop.done:
                pair.step(pair.drop, prefill=False)
                yield pair.event()
        trace = session.trace
        pair.take_engine_numbers(trace)
    yield pair.finish(trace)


def prefill_trace(
    model: torch.nn.Module,
    processor: Any,
    media: "Image.Image | DecodedVideo",
    question: str,
    history: Sequence[tuple[str, str]],
    schedule: DropSchedule | str,
    method: str,
    *,
    seed: int = 0,
) -> Trace:
    """One prefill (no answer) of ``question`` under ``method`` and ``schedule``: the tokens a
    baseline keeps on the same inputs as a chat turn (``history``: earlier ``(question, answer)``
    pairs), for comparing what each method keeps. ``seed`` fixes ``random``."""
    schedule = DropSchedule.parse(schedule) if isinstance(schedule, str) else schedule
    if isinstance(media, DecodedVideo):
        check_video_model(model)
    inputs = _to_device(_media_inputs(processor, history, question, media), model)
    with apply(model, schedule, method, seed=seed) as session, torch.inference_mode():
        model(**inputs, use_cache=False, logits_to_keep=1)
        return session.trace
