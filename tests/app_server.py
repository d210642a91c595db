"""Start ``python app.py`` in a subprocess on a free port, for the app-level tests."""

from __future__ import annotations

import json
import os
import urllib.request

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
    files or checking values for us, as an attacker would call it."""
    request = urllib.request.Request(server.url + f"gradio_api/call/{api}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:
        event_id = json.loads(reply.read())["event_id"]
    with urllib.request.urlopen(server.url + f"gradio_api/call/{api}/{event_id}", timeout=timeout) as reply:
        return reply.read().decode()
