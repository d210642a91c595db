"""The app's HTTP edge: what one request may carry before Gradio reads, stores, logs or echoes it.

Gradio keeps every input value of a session (for its deep links) before any handler sees it, writes
a validation error per list item to the log, and resolves a URL sent as file data (falling back to a
DNS-over-HTTPS lookup of an outside host for loopback names). So the bounds have to hold before
Gradio parses a request, and :class:`EdgeGuard`, an ASGI middleware in front of Gradio's routes,
enforces them on every host:

- a JSON body of at most :attr:`EdgeLimits.max_json_bytes`, a form (file upload) body of at most
  :attr:`EdgeLimits.max_form_bytes` with its length declared;
- in a JSON body: no string over :attr:`EdgeLimits.max_text` characters, no list or object over
  :attr:`EdgeLimits.max_items` entries, at most :attr:`EdgeLimits.max_nodes` values in all, nested
  at most :attr:`EdgeLimits.max_depth` deep, no NaN or infinite number, and no file data whose
  ``path`` is a URL (no outbound request, no lookup);
- an event's values of the kinds its input components take (:func:`event_inputs`): a number for a
  slider, text for a textbox or dropdown, file data or nothing for a file, so that Gradio's own
  preprocessing never fails with a traceback on a dict, a list or ``None``;
- ``GET /gradio_api/file=<URL>``, with which Gradio fetches any public URL for a visitor, answers 403;
- the routes in :attr:`EdgeLimits.closed` answer 404 (Gradio's deep links, which write a copy of a
  session's values to disk and never delete it; the app offers none).

A refusal is a JSON ``{"detail": …}`` with status 400, 404, 411 or 413, one plain sentence that
names no server path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

__all__ = ["EdgeGuard", "EdgeLimits", "EdgeRefusal", "check_json", "check_event", "event_inputs"]

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

URL_FILE = "This server does not fetch files from URLs: upload the file instead."


@dataclass(frozen=True)
class EdgeLimits:
    """What one request may carry (see the module docstring)."""

    max_json_bytes: int = 64 * 1024          # an event with its values is a few kB
    max_form_bytes: int = 101 * 1024 * 1024  # one upload of up to the app's 100 MB file limit
    max_text: int = 16_384                   # characters of any one string (the handlers' own caps are lower)
    max_items: int = 64                      # entries of any one list or object
    max_nodes: int = 512                     # values in one JSON body, all levels together
    max_depth: int = 32                      # lists and objects within each other
    closed: tuple[str, ...] = ("/gradio_api/deep_link",)


class EdgeRefusal(ValueError):
    """A request over the limits; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _names_url(path: Any) -> bool:
    """Whether a file path a visitor sent is a URL (which Gradio would fetch, looking its host up)."""
    return isinstance(path, str) and path.strip().lower().startswith(("http:", "https:", "//"))


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise EdgeRefusal("Numbers in a request must be finite.")
    return value


def _no_constant(name: str) -> float:
    raise EdgeRefusal(f"Numbers in a request must be finite, not {name}.")


def check_json(body: bytes, limits: EdgeLimits = EdgeLimits()) -> Any:
    """The JSON ``body`` parsed; :class:`EdgeRefusal` if it breaks a limit. A body that is not JSON
    gives ``None`` and is left to Gradio (which refuses it)."""
    try:
        data = json.loads(body, parse_float=_finite, parse_constant=_no_constant)
    except EdgeRefusal:
        raise
    except RecursionError:  # Gradio's own parse would fail with a traceback
        raise EdgeRefusal(f"Values in a request may be nested at most {limits.max_depth} deep.", 413) from None
    except ValueError:
        return None
    _check_tree(data, limits)
    return data


def _check_tree(data: Any, limits: EdgeLimits) -> None:
    nodes = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise EdgeRefusal(f"A request may carry at most {limits.max_nodes} values.", 413)
        if isinstance(value, str):
            if len(value) > limits.max_text:
                raise EdgeRefusal(f"A text in this request is {len(value):,} characters long; the limit is "
                                  f"{limits.max_text:,}.", 413)
        elif isinstance(value, (list, dict)):
            if depth >= limits.max_depth:
                raise EdgeRefusal(f"Values in a request may be nested at most {limits.max_depth} deep.", 413)
            if len(value) > limits.max_items:
                raise EdgeRefusal(f"A list in this request has {len(value):,} entries; the limit is "
                                  f"{limits.max_items}.", 413)
            if isinstance(value, dict):
                if _names_url(value.get("path")):
                    raise EdgeRefusal(URL_FILE)
                children = [*value.keys(), *value.values()]
            else:
                children = value
            stack.extend((child, depth + 1) for child in children)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: what each kind of input component accepts from a request (kinds not named here: anything)
_ACCEPTS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "slider": ("a number", _is_number),
    "number": ("a number", lambda v: v is None or _is_number(v)),
    "checkbox": ("true or false", lambda v: v is None or isinstance(v, (bool, int))),
    "textbox": ("text", lambda v: v is None or isinstance(v, str)),
    "button": ("text", lambda v: v is None or isinstance(v, str)),
    "dropdown": ("one of its choices", lambda v: v is None or isinstance(v, str) or _is_number(v)),
    "file": ("file data", lambda v: v is None or isinstance(v, dict)),
    "image": ("file data", lambda v: v is None or isinstance(v, dict)),
    "imageeditor": ("an editor value", lambda v: v is None or isinstance(v, dict)),
}


def event_inputs(blocks: Any) -> dict[int | str, tuple[str, ...]]:
    """The kinds of input components of each event of ``blocks`` (a built ``gr.Blocks``), by event
    index (how the page joins the queue) and by ``/api_name`` (the REST routes)."""
    events: dict[int | str, tuple[str, ...]] = {}
    for index, fn in blocks.fns.items():
        kinds = tuple(block.get_block_name() for block in fn.inputs)
        events[index] = kinds
        if isinstance(fn.api_name, str) and fn.api_name:
            events["/" + fn.api_name] = kinds
    return events


def check_event(kinds: tuple[str, ...], data: Any) -> None:
    """:class:`EdgeRefusal` if a value in ``data`` is not of the kind its input component takes."""
    if not isinstance(data, list):
        raise EdgeRefusal("An event's data must be a list of values.")
    for position, (kind, value) in enumerate(zip(kinds, data), start=1):
        expected, accepts = _ACCEPTS.get(kind, ("", lambda v: True))
        if not accepts(value):
            raise EdgeRefusal(f"Value {position} of this event must be {expected}.")


def _event_key(path: str, data: Any) -> int | str | None:
    """Which event a request calls: the queue's ``fn_index``, or the name in ``/call/NAME`` / ``/run/NAME``."""
    if path.endswith("/queue/join") and isinstance(data, dict):
        index = data.get("fn_index")
        return index if isinstance(index, int) and not isinstance(index, bool) else None
    for route in ("/call/", "/run/", "/api/"):
        if route in path:
            return "/" + path.rsplit(route, 1)[1].strip("/")
    return None


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


class EdgeGuard:
    """ASGI middleware that refuses requests over :class:`EdgeLimits` before the app reads them."""

    def __init__(self, app: ASGIApp, limits: EdgeLimits = EdgeLimits(),
                 events: dict[int | str, tuple[str, ...]] | None = None) -> None:
        self.app = app
        self.limits = limits
        self.events = events or {}  # event_inputs() of the app's Blocks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "").rstrip("/")
        if any(path == closed or path.endswith(closed) for closed in self.limits.closed):
            await _answer(send, 404, "Not found.")
            return
        if _names_url(path.split("/file=", 1)[1] if "/file=" in path else ""):
            await _answer(send, 403, URL_FILE)  # Gradio would fetch it for the visitor (and look its host up)
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._checked_body(scope, receive)
        except EdgeRefusal as refusal:
            await _answer(send, refusal.status, str(refusal))
            return
        await self.app(scope, receive, send)

    async def _checked_body(self, scope: Scope, receive: Receive) -> Receive:
        """The body's ``receive``, replayed after checking; :class:`EdgeRefusal` if over a limit."""
        kind = _header(scope, b"content-type").split(";")[0].strip().lower()
        declared = _header(scope, b"content-length")
        length = int(declared) if declared.isdigit() else None
        if kind == "multipart/form-data":
            if length is None:
                raise EdgeRefusal("A file upload must declare its length.", 411)
            if length > self.limits.max_form_bytes:
                raise EdgeRefusal(f"The upload is over {self.limits.max_form_bytes // 2 ** 20} MB.", 413)
            return receive  # Gradio's form parser streams it to disk, file by file
        cap = self.limits.max_json_bytes
        if length is not None and length > cap:
            raise EdgeRefusal(f"A request may be at most {cap // 1024} kB.", 413)
        body = await _read_body(receive, cap)
        data = check_json(body, self.limits)  # whatever its declared type: Gradio reads any body as JSON
        key = _event_key(scope.get("path", ""), data)
        if key in self.events and isinstance(data, dict):
            check_event(self.events[key], data.get("data"))
        return _replay(body, receive)


async def _read_body(receive: Receive, cap: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise EdgeRefusal(f"A request may be at most {cap // 1024} kB.", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, when the client goes
    return replay


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
