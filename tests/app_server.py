"""Start ``python app.py`` in a subprocess on a free port, for the app-level tests."""

from __future__ import annotations

import os

from studio.app_process import AppProcess


class AppServer(AppProcess):
    """The app for a test: answers of at most 6 tokens unless ``env`` says otherwise."""

    def __init__(self, env: dict[str, str] | None = None, log_path: str | os.PathLike | None = None,
                 timeout: float = 120.0) -> None:
        super().__init__({"V2DROP_MAX_NEW_TOKENS": "6", **(env or {})}, log_path, timeout)

    def log_text_full(self) -> str:
        return self.log_text(last=None)
