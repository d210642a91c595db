"""ZeroGPU by the ``spaces`` documentation, checked on the CPU: a stand-in ``spaces`` package records
what ``spaces.GPU`` wraps and the duration each call asks for, and logs every model forward that
runs outside a decorated call; the app runs as on a ZeroGPU Space (``SPACES_ZERO_GPU`` set) and is
driven through its HTTP API. No ZeroGPU machine is involved: see ``studio/zerogpu.py`` for what this
cannot verify."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from studio import zerogpu
from studio.state import PageState

ROOT = Path(__file__).resolve().parent.parent
PICTURE = ROOT / "assets" / "examples" / "shapes_0_color.png"

FAKE_SPACES = textwrap.dedent('''
    """A stand-in for Hugging Face's ``spaces`` package (tests/test_zerogpu.py)."""
    import functools, inspect, json, os

    import torch
    from transformers import PreTrainedModel

    LOG = os.environ["FAKE_SPACES_LOG"]
    depth = 0  # decorated calls under way (handlers run one model job at a time here)


    def _log(*entry):
        with open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\\n")


    def GPU(fn=None, duration=60):
        if fn is None:
            return lambda f: GPU(f, duration=duration)
        _log("wrapped", fn.__qualname__, callable(duration))

        def seconds(args, kwargs):
            value = duration(*args, **kwargs) if callable(duration) else duration
            _log("call", fn.__qualname__, value)

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(*args, **kwargs):
                global depth
                seconds(args, kwargs)
                depth += 1
                try:
                    yield from fn(*args, **kwargs)
                finally:
                    depth -= 1
            return stream

        @functools.wraps(fn)
        def call(*args, **kwargs):
            global depth
            seconds(args, kwargs)
            depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth -= 1
        return call


    _module_call = torch.nn.Module.__call__


    def _watched(self, *args, **kwargs):
        if isinstance(self, PreTrainedModel):
            _log("forward", type(self).__name__, depth > 0)
        return _module_call(self, *args, **kwargs)


    torch.nn.Module.__call__ = _watched
''')


def test_durations_grow_with_frames_and_tokens_and_stay_in_bounds():
    studio = SimpleNamespace(answer_tokens=48)
    image = PageState(media="image", num_frames=32)
    video8, video32 = PageState(media="video", num_frames=8), PageState(media="video", num_frames=32)
    chat = [zerogpu.chat_seconds(studio, "q", None, s, None) for s in (image, video8, video32)]
    assert chat[0] < chat[1] < chat[2] <= zerogpu.MAX_SECONDS and chat[0] >= zerogpu.MIN_SECONDS
    assert zerogpu.chat_seconds(SimpleNamespace(answer_tokens=200), "q", None, image, None) > chat[0]
    assert zerogpu.chat_seconds(SimpleNamespace(answer_tokens=10_000), "q", None, video32, None) == zerogpu.MAX_SECONDS
    assert zerogpu.baseline_seconds(studio, "random", video32, None) > zerogpu.baseline_seconds(studio, "random", image)
    assert zerogpu.MIN_SECONDS <= zerogpu.sweep_seconds(SimpleNamespace(registry=None), image) <= zerogpu.MAX_SECONDS


def test_zero_gpu_is_detected_from_the_spaces_variable():
    assert zerogpu.active({"SPACES_ZERO_GPU": "true"}) and zerogpu.active({"SPACES_ZERO_GPU": "1"})
    assert not zerogpu.active({}) and not zerogpu.active({"SPACES_ZERO_GPU": "0"})


def test_off_zero_gpu_the_wrapper_keeps_the_handler_as_it_is(monkeypatch):
    """Without the ``spaces`` package: same answers, same signature (Gradio injects gr.Request by
    it) and a generator stays a generator (Gradio streams it)."""
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "spaces" else real_import(name, *a, **k))

    class Handlers:
        def chat(self, question: str, state: PageState, request=None):
            yield question.upper()

        def baseline(self, method: str, state: PageState, request=None):
            return method * 2

    handlers = Handlers()
    chat = zerogpu.on_gpu(SimpleNamespace(), handlers.chat, zerogpu.chat_seconds)
    baseline = zerogpu.on_gpu(SimpleNamespace(), handlers.baseline, zerogpu.baseline_seconds)
    assert inspect.isgeneratorfunction(chat) and not inspect.isgeneratorfunction(baseline)
    assert inspect.signature(chat) == inspect.signature(handlers.chat)
    assert list(chat("hi", PageState())) == ["HI"] and baseline("ab", PageState()) == "abab"


@pytest.fixture(scope="module")
def zero_server(tmp_path_factory):
    from tests.app_server import AppServer

    folder = tmp_path_factory.mktemp("zerogpu")
    (folder / "spaces").mkdir()
    (folder / "spaces" / "__init__.py").write_text(FAKE_SPACES)
    log = folder / "spaces.log"
    log.write_text("")
    import os
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    server = AppServer({"SPACES_ZERO_GPU": "true", "FAKE_SPACES_LOG": str(log), "PYTHONPATH": path},
                       log_path=folder / "app.log")
    yield server, log
    server.stop()


def test_every_model_run_happens_inside_a_decorated_call(zero_server):
    from gradio_client import Client, handle_file

    server, log = zero_server
    client = Client(server.url, verbose=False)
    picture = handle_file(str(PICTURE))
    client.predict(picture, api_name="/set_image")
    client.predict("what color is the star ?", picture, api_name="/chat")
    client.predict("random", api_name="/set_baseline")
    client.predict(api_name="/layer_sweep")
    client.predict(api_name="/image_info")
    client.predict(10, 10, 120, 120, 0, None, api_name="/mark_box")
    client.predict("embedded: shapes-llava", False, api_name="/switch_model")
    assert server.proc.poll() is None
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    wrapped = {name: has_duration for kind, name, has_duration in (e for e in entries if e[0] == "wrapped")}
    assert wrapped == {"Studio.chat": True, "Studio.on_baseline": True, "Studio.on_layer_sweep": True}
    calls = {}
    for kind, name, seconds in (e for e in entries if e[0] == "call"):
        calls.setdefault(name, []).append(seconds)
    assert set(calls) == set(wrapped)  # each one ran, and asked for its own duration
    seconds = [s for values in calls.values() for s in values]
    assert all(zerogpu.MIN_SECONDS <= s <= zerogpu.MAX_SECONDS and isinstance(s, int) for s in seconds)
    forwards = [e for e in entries if e[0] == "forward"]
    assert forwards, "no model ran: the test drove nothing"
    outside = [e[1] for e in forwards if not e[2]]
    assert outside == [], f"model forwards outside a spaces.GPU call: {outside}"
    assert "warm-up" not in server.log_text_full()  # no start-up run on ZeroGPU
