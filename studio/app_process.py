"""``python app.py`` in a subprocess on a free loopback port: how the tests and the session-memory
benchmark reach the app the way a visitor does, over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["AppProcess", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """Start the app with ``env`` added to this process's environment (hub offline, no analytics),
    wait until its API answers, and stop it with :meth:`stop`. Its output goes to ``log_path``."""

    def __init__(self, env: dict[str, str] | None = None, log_path: str | os.PathLike | None = None,
                 timeout: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self._log = open(self.log_path, "w") if self.log_path else None
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port",
                                      str(self.port), "--no-warm-up"], cwd=ROOT, env=environment,
                                     stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}; log: {self.log_text()}")
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"app.py did not start within {timeout} s; log: {self.log_text()}")

    def log_text(self, last: int | None = 3000) -> str:
        """The app's output so far (its last ``last`` characters; all of it for None)."""
        if not (self.log_path and self.log_path.exists()):
            return "(no log)"
        text = self.log_path.read_text()
        return text[-last:] if last else text

    def rss_mb(self) -> float:
        """Resident memory of the app process in MiB (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("VmRSS not found")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self._log is not None:
            self._log.close()
            self._log = None
