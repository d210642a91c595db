"""Start ``python app.py`` in a subprocess on a free port, for the app-level tests."""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from studio.app_process import AppProcess


class AppServer(AppProcess):
    """The app for a test: answers of at most 6 tokens unless ``env`` says otherwise."""

    def __init__(self, env: dict[str, str] | None = None, log_path: str | os.PathLike | None = None,
                 timeout: float = 120.0) -> None:
        super().__init__({"V2DROP_MAX_NEW_TOKENS": "6", **(env or {})}, log_path, timeout)

    def log_text_full(self) -> str:
        return self.log_text(last=None)


def raw_call(server: AppServer, api: str, data: list, timeout: float = 240) -> str:
    """POST to Gradio's REST route and read the whole event stream: no client library uploading
    files or checking values for us, as an attacker would call it. A request the app's edge refuses
    before it is queued (a 4xx answer) reads as an error event with the refusal as its data."""
    import urllib.error

    request = urllib.request.Request(server.url + f"gradio_api/call/{api}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            event_id = json.loads(reply.read())["event_id"]
    except urllib.error.HTTPError as err:  # refused before it was queued (studio/edge.py): an error event
        if not 400 <= err.code < 500:
            raise
        return f"event: error\ndata: {err.read().decode()}\n\n"
    with urllib.request.urlopen(server.url + f"gradio_api/call/{api}/{event_id}", timeout=timeout) as reply:
        return reply.read().decode()


def fn_index(server: AppServer, name: str) -> int:
    """The index of the page's event whose ``api_name`` is ``name`` (private events included), as the
    browser sends it to the queue."""
    with urllib.request.urlopen(server.url + "config", timeout=10) as reply:
        config = json.loads(reply.read())
    for index, dependency in enumerate(config["dependencies"]):
        if dependency.get("api_name") == name:
            return index
    raise KeyError(name)


def queue_call(server: AppServer, fn: int | str, data: list, session_hash: str | None = None,
               event_data: Any = None, timeout: float = 120, body: bytes | None = None) -> list[dict]:
    """Join the queue as the page does (any event, private ones too, by index or api_name) and read
    the session's event stream until this event completes; returns the messages. ``body`` replaces
    the JSON body (e.g. to send what no JSON encoder writes, such as NaN)."""
    import secrets

    session_hash = session_hash or secrets.token_hex(8)
    index = fn if isinstance(fn, int) else fn_index(server, fn)
    payload = body if body is not None else json.dumps(
        {"data": data, "fn_index": index, "session_hash": session_hash, "event_data": event_data,
         "trigger_id": None}).encode()
    request = urllib.request.Request(server.url + "gradio_api/queue/join", data=payload, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        event_id = json.loads(reply.read())["event_id"]
    messages = []
    with urllib.request.urlopen(server.url + f"gradio_api/queue/data?session_hash={session_hash}",
                                timeout=timeout) as stream:
        for line in stream:
            if not line.startswith(b"data:"):
                continue
            message = json.loads(line[5:])
            if message.get("event_id") not in (None, event_id):
                continue
            messages.append(message)
            if message.get("msg") in ("process_completed", "close_stream", "unexpected_error"):
                break
    return messages


def upload_then_close_tab(server: AppServer, picture: str, wait: float = 30.0):
    """Open a session with one uploaded picture, then do what a closing browser tab does (hold
    ``/heartbeat`` open, then drop it) and wait until the session's folder is deleted.
    Returns the client (its ``session_hash`` is the released session) and the names of the session
    folders that existed before."""
    import http.client
    import time

    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False)
    root = server.work / "sessions"
    before = {p.name for p in root.iterdir()} if root.exists() else set()
    client.predict(handle_file(picture), api_name="/set_image")
    mine = {p.name for p in root.iterdir()} - before
    assert len(mine) == 1, mine
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", f"/gradio_api/heartbeat/{client.session_hash}")
    assert conn.getresponse().readline().startswith(b"data")
    conn.close()  # the tab goes away: its session is released
    folder = root / mine.pop()
    deadline = time.time() + wait
    while folder.exists():
        assert time.time() < deadline, "the closed session's folder was not deleted"
        time.sleep(0.5)
    return client, before
