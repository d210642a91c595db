"""Hugging Face ZeroGPU, as the ``spaces`` package documents it; a no-op everywhere else.

What the documentation asks, and where the app does it:

- **Decorate every function that needs the GPU** with ``spaces.GPU``: the three handlers that run a
  model (``chat``, ``set_baseline``, ``layer_sweep``) are wrapped by :func:`on_gpu` in ``app.py``;
  loading, schedules, marks, layer views and charts run no model and need no GPU.
- **Place models with ``.to("cuda")`` outside the decorated functions**: the registry's models are
  loaded in the main process (``v2drop.loading.load_model``: ``from_pretrained`` on the CPU, then
  ``.to(device)``), the embedded one at start-up; ZeroGPU emulates CUDA there and moves the weights
  onto a GPU for each decorated call.
- **A duration per request** (``spaces.GPU(duration=callable)``, called with the handler's own
  arguments; a shorter duration gets a visitor a GPU sooner): :func:`chat_seconds`,
  :func:`baseline_seconds` and :func:`sweep_seconds` size it from the frames and answer tokens.
- **Nothing touches CUDA outside a decorated call**: on ZeroGPU (:func:`active`) the start-up
  warm-up run is skipped and the registry does not empty the CUDA cache after a load.

A decorated call runs in a worker process forked from the main one, so what it changes there is lost
unless it is returned. :func:`on_gpu` therefore opens the visitor's session and loads the model in
the main process *before* the call: the session's folder (where the worker writes the trace) and the
weights belong to the main process, which frees them. The returned page state carries the rest.

Not verified here (no ZeroGPU machine): the timings behind the durations on a ZeroGPU slice, that
ZeroGPU reports CUDA in the main process (the registry then picks ``cuda``), and that a model placed
after start-up (a visitor's pick) is moved like one placed at start-up.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable, Mapping

__all__ = ["active", "gpu_decorator", "on_gpu", "chat_seconds", "baseline_seconds", "sweep_seconds",
           "MIN_SECONDS", "MAX_SECONDS"]

MIN_SECONDS, MAX_SECONDS = 20, 120  # ZeroGPU's default is 60 s; 120 s is as long as any turn here needs
BASE_SECONDS = 12.0        # weights onto the GPU slice, processor, vision tower, two prefills
SECONDS_PER_FRAME = 0.75   # each video frame adds its vision tokens to both prefills
SECONDS_PER_TOKEN = 0.08   # one decode step of one answer, a 7B model on a slice, with margin
SWEEP_RUNS_PER_LAYER = 3   # V²Drop, random and uniform, first drop at every layer


def active(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs on ZeroGPU hardware (the Space sets ``SPACES_ZERO_GPU``)."""
    value = (os.environ if env is None else env).get("SPACES_ZERO_GPU", "")
    return value.strip().lower() not in {"", "0", "false", "no", "off"}


def gpu_decorator() -> Callable[..., Any]:
    """``spaces.GPU`` where the ``spaces`` package is installed (it is effect-free off ZeroGPU), else
    a decorator that returns the function unchanged."""
    try:
        import spaces  # type: ignore
    except ImportError:
        def passthrough(fn: Callable | None = None, **_kwargs: Any) -> Any:
            return fn if fn is not None else (lambda f: f)
        return passthrough
    return spaces.GPU


def _clamp(seconds: float) -> int:
    return int(min(MAX_SECONDS, max(MIN_SECONDS, round(seconds))))


def _frames(state: Any) -> int:
    return int(getattr(state, "num_frames", 1) or 1) if getattr(state, "media", "image") == "video" else 1


def chat_seconds(studio: Any, question: Any = None, image_file: Any = None, state: Any = None,
                 *_rest: Any, **_kwargs: Any) -> int:
    """GPU seconds for one chat turn: both answers' prefills (per frame) and decode steps (per token)."""
    return _clamp(BASE_SECONDS + SECONDS_PER_FRAME * _frames(state)
                  + SECONDS_PER_TOKEN * 2 * int(getattr(studio, "answer_tokens", 48)))


def baseline_seconds(studio: Any, method: Any = None, state: Any = None, *_rest: Any, **_kwargs: Any) -> int:
    """GPU seconds for one baseline prefill on the last turn."""
    return _clamp(BASE_SECONDS / 2 + SECONDS_PER_FRAME * _frames(state))


def sweep_seconds(studio: Any, state: Any = None, *_rest: Any, **_kwargs: Any) -> int:
    """GPU seconds for the drop-layer sweep: one short run per method and first drop layer."""
    try:
        layers = studio.registry.card(getattr(state, "model_id", None)).num_layers
    except (KeyError, AttributeError):
        layers = 32
    return _clamp(BASE_SECONDS / 2 + 0.5 * SWEEP_RUNS_PER_LAYER * layers)


def _prepare(studio: Any, args: tuple, kwargs: dict) -> None:
    """In the main process, before the GPU call: open the visitor's session and load the model, so
    that both outlive ZeroGPU's worker. Failures are left for the handler to report."""
    from studio.state import PageState

    state = next((a for a in (*args, *kwargs.values()) if isinstance(a, PageState)), None)
    request = kwargs.get("request", next((a for a in args if type(a).__name__ == "Request"), None))
    if state is None:
        return
    try:
        studio.session(state, request)
        studio.registry.ensure((state.stats or {}).get("model_id") or state.model_id)
    except Exception:  # noqa: BLE001 - the handler meets the same error and answers it
        pass


def on_gpu(studio: Any, handler: Callable, seconds: Callable[..., int]) -> Callable:
    """``handler`` (a :class:`studio.handlers.Studio` method that runs a model) decorated with
    ``spaces.GPU(duration=…)``, ``seconds(studio, *handler's arguments)`` giving the duration; on
    ZeroGPU the session and model are made ready in the main process first. Gradio sees the
    handler's own signature (``functools.wraps``)."""
    decorated = gpu_decorator()(handler, duration=functools.partial(seconds, studio))
    zero = active()

    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def stream(*args: Any, **kwargs: Any) -> Any:
            if zero:
                _prepare(studio, args, kwargs)
            yield from decorated(*args, **kwargs)
        return stream

    @functools.wraps(handler)
    def call(*args: Any, **kwargs: Any) -> Any:
        if zero:
            _prepare(studio, args, kwargs)
        return decorated(*args, **kwargs)
    return call
