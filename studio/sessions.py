"""Per-visitor resources and their clean-up: each browser session's folder of files, and a bounded
cache of decoded video frames.

Every session gets a folder named by its own unguessable id (``secrets.token_urlsafe``) under one
root; its image, video copy and trace files go there, and nowhere that Gradio serves to everybody.
A session is released (folder deleted, frames dropped) when its tab closes (``demo.unload``), when
Gradio expires its state (``gr.State(time_to_live=…, delete_callback=…)``), when it has been idle for
``idle_seconds``, or when more than ``max_sessions`` sessions are open (least recently used first).
Decoded frames live in :class:`FrameCache`, bounded by bytes across all sessions: an evicted video is
decoded again from the session's own copy when it is needed. So memory and disk stay bounded however
many visitors come and go.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from v2drop.video import DecodedVideo

__all__ = ["Session", "SessionStore", "SessionClosed", "StoreUsage", "FrameCache", "DEFAULT_ROOT", "folder_bytes"]

DEFAULT_ROOT = Path(tempfile.gettempdir()) / "v2drop-studio"


@dataclass
class Session:
    """One visitor's session: its secret id and the folder its files live in."""

    key: str           # Gradio's session hash (chosen by the browser; never used in a file name)
    id: str            # ours: unguessable, names the folder
    folder: Path
    last_used: float


class SessionClosed(RuntimeError):
    """The session was released (its tab closed, or it idled out) and is never reopened."""


@dataclass(frozen=True)
class StoreUsage:
    """How much the sessions hold right now."""

    sessions: int
    disk_bytes: int


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder`` (0 if it does not exist)."""
    total = 0
    for path in folder.rglob("*") if folder.exists() else ():
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:  # deleted while we looked
            continue
    return total


class SessionStore:
    """Sessions by key, each with its own folder under ``root``; thread-safe."""

    def __init__(self, root: Path = DEFAULT_ROOT, idle_seconds: float = 1800.0, max_sessions: int = 200,
                 on_release: Callable[[Session], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.idle_seconds = float(idle_seconds)
        self.max_sessions = int(max_sessions)
        self._on_release = on_release
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        # released keys, remembered so that such a key is never reopened
        self._released: OrderedDict[str, None] = OrderedDict()
        self._leftovers: list[Path] = []  # released folders a running handler wrote into meanwhile
        self.max_released = max(10_000, 20 * self.max_sessions)

    def open(self, key: str) -> Session:
        """The session for ``key`` (created on first use), marked as used now. Frees idle and
        surplus sessions on the way, so the store never holds more than it may. Raises
        :class:`SessionClosed` for a key that was released."""
        now = self._clock()
        with self._lock:
            if key in self._released or len(key) > 256:
                raise SessionClosed(key)
            session = self._sessions.get(key)
            if session is None:
                sid = secrets.token_urlsafe(18)
                session = Session(key, sid, self.root / sid, now)
                self._sessions[key] = session
            session.last_used = now
            self._sessions.move_to_end(key)
            stale = self._stale_keys(now, keep=key)
            session.folder.mkdir(parents=True, exist_ok=True)  # under the lock: release() cannot interleave
        for old in stale:
            self.release(old)
        self._delete_leftovers()
        return session

    def _stale_keys(self, now: float, keep: str) -> list[str]:
        idle = [k for k, s in self._sessions.items() if k != keep and now - s.last_used > self.idle_seconds]
        surplus = [k for k in self._sessions if k != keep and k not in idle]
        extra = len(self._sessions) - len(idle) - self.max_sessions
        return idle + surplus[:max(0, extra)]

    def release(self, key: str | None) -> None:
        """Forget ``key`` and delete its folder (a no-op for an unknown key)."""
        if not key:
            return
        with self._lock:
            session = self._sessions.pop(key, None)
            if session is None:
                return
            self._released[key] = None
            while len(self._released) > self.max_released:
                self._released.popitem(last=False)
        shutil.rmtree(session.folder, ignore_errors=True)
        if session.folder.exists():  # a file appeared while it was deleted: try again on the next open
            with self._lock:
                self._leftovers.append(session.folder)
        if self._on_release is not None:
            self._on_release(session)

    def _delete_leftovers(self) -> None:
        with self._lock:
            leftovers, self._leftovers = self._leftovers, []
        for folder in leftovers:
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():
                with self._lock:
                    self._leftovers.append(folder)

    def sweep(self) -> int:
        """Release every idle session; returns how many were released."""
        with self._lock:
            stale = self._stale_keys(self._clock(), keep="")
        for key in stale:
            self.release(key)
        self._delete_leftovers()
        return len(stale)

    def release_all(self) -> None:
        with self._lock:
            keys = list(self._sessions)
        for key in keys:
            self.release(key)

    def usage(self) -> StoreUsage:
        with self._lock:
            count = len(self._sessions)
        return StoreUsage(count, folder_bytes(self.root))

    def new_file(self, key: str, stem: str, suffix: str) -> Path:
        """A fresh, unguessable file name in ``key``'s folder."""
        return self.open(key).folder / f"{stem}-{secrets.token_hex(4)}{suffix}"


class FrameCache:
    """Decoded videos of all sessions, keyed by the session's own copy of the video file and the
    frame count; least recently used out once they hold more than ``max_bytes``. A session holds one
    video at a time (a new one replaces those in the same folder)."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._videos: OrderedDict[tuple[str, int], tuple[DecodedVideo, int]] = OrderedDict()

    @staticmethod
    def size_of(video: DecodedVideo) -> int:
        return sum(frame.width * frame.height * len(frame.getbands()) for frame in video.frames)

    def get(self, source: str, num_frames: int, decode: Callable[[str, int], DecodedVideo]) -> DecodedVideo:
        """The frames of ``source`` sampled ``num_frames`` times, decoded (and cached) if missing."""
        key = (str(source), int(num_frames))
        with self._lock:
            if key in self._videos:
                self._videos.move_to_end(key)
                return self._videos[key][0]
        video = decode(str(source), int(num_frames))
        self._put(key, video)
        return video

    def _put(self, key: tuple[str, int], video: DecodedVideo) -> None:
        folder = Path(key[0]).parent
        with self._lock:
            for old in [k for k in self._videos if Path(k[0]).parent == folder]:
                del self._videos[old]
            self._videos[key] = (video, self.size_of(video))
            while len(self._videos) > 1 and self._total() > self.max_bytes:
                self._videos.popitem(last=False)

    def drop_under(self, folder: Path) -> None:
        """Forget every video whose file is in ``folder`` (a released session's)."""
        with self._lock:
            for key in [k for k in self._videos if Path(k[0]).parent == Path(folder)]:
                del self._videos[key]

    def _total(self) -> int:
        return sum(size for _, size in self._videos.values())

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._total()

    def __len__(self) -> int:
        with self._lock:
            return len(self._videos)
