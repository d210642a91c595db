"""Session-memory benchmark: many visitor sessions against a fresh app, with the app's resident
memory and temp disk measured before, during and after.

    python -m studio.soak --sessions 300            # or: python app.py --benchmark-sessions 300
    python -m studio.soak --sessions 40 --ask 5     # also ask a question in every 5th session

Starts ``python app.py`` in a subprocess on a free port with its own Gradio upload folder and session
folder, a short idle time (``--ttl``) and a small session cap (``--max-sessions``). Each session is a
new ``gradio_client`` visitor that uploads a large image and a video through the public API (and, every
``--ask`` sessions, asks a question), then goes away without saying so, as a closed tab on a flaky
network would. Prints a table (sessions done, resident memory, session files, Gradio's upload cache)
and writes JSON (``--json``, default results/soak.json). After the last session it waits ``--ttl``
plus a few seconds and measures again: what the sessions left must be gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from studio.app_process import AppProcess
from studio.sessions import folder_bytes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_VIDEO = ROOT / "assets" / "videos" / "moving_shapes.mp4"
EXAMPLE_IMAGE = ROOT / "assets" / "examples" / "shapes_0_color.png"

__all__ = ["Sample", "SoakApp", "run_sessions", "make_large_image", "main"]


@dataclass
class Sample:
    """One measurement of the running app."""

    sessions: int          # sessions done so far
    rss_mb: float          # the app's resident memory
    session_files_mb: float
    session_folders: int
    upload_cache_mb: float
    seconds: float         # since the benchmark started


class SoakApp(AppProcess):
    """The app with its own temp folders, a short idle time and a small session cap, for measuring
    it from outside."""

    def __init__(self, workdir: Path, ttl: float, max_sessions: int, frame_cache_mb: float = 64,
                 extra_env: dict[str, str] | None = None, timeout: float = 120.0) -> None:
        self.session_dir, self.upload_dir = workdir / "sessions", workdir / "gradio"
        env = {"GRADIO_TEMP_DIR": str(self.upload_dir), "V2DROP_SESSION_DIR": str(self.session_dir),
               "V2DROP_SESSION_TTL": str(ttl), "V2DROP_MAX_SESSIONS": str(max_sessions),
               "V2DROP_FRAME_CACHE_MB": str(frame_cache_mb), "V2DROP_MAX_NEW_TOKENS": "4", **(extra_env or {})}
        super().__init__(env, workdir / "app.log", timeout)

    def sample(self, sessions: int, start: float) -> Sample:
        folders = len([p for p in self.session_dir.iterdir()]) if self.session_dir.exists() else 0
        return Sample(sessions, round(self.rss_mb(), 1), round(folder_bytes(self.session_dir) / 2**20, 2), folders,
                      round(folder_bytes(self.upload_dir) / 2**20, 2), round(time.perf_counter() - start, 1))


def make_large_image(path: Path, size: tuple[int, int] = (1920, 1080)) -> Path:
    """A noisy full-HD PNG (about 6 MB: nothing compresses it away)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def one_session(url: str, image: Path, video: Path, ask: bool) -> None:
    """One visitor: upload an image and a video (and maybe ask about the image), then leave."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    client.predict(handle_file(str(image)), api_name="/set_image")
    client.predict(handle_file(str(video)), 8, api_name="/set_video")
    if ask:
        client.predict("what color is the star ?", handle_file(str(EXAMPLE_IMAGE)), api_name="/chat")
    client.close()


def run_sessions(app: SoakApp, sessions: int, image: Path, every: int, ask: int = 0,
                 settle: float = 0.0) -> list[Sample]:
    """``sessions`` visitors one after another; a sample before, every ``every`` sessions, and one
    more ``settle`` seconds after the last (when the app should have freed what they left)."""
    start = time.perf_counter()
    samples = [app.sample(0, start)]
    for i in range(1, sessions + 1):
        one_session(app.url, image, EXAMPLE_VIDEO, ask=bool(ask) and i % ask == 0)
        if i % every == 0 or i == sessions:
            samples.append(app.sample(i, start))
    if settle:
        time.sleep(settle)
        samples.append(app.sample(sessions, start))
    return samples


def _table(samples: list[Sample]) -> str:
    head = f"{'sessions':>8} {'RSS MB':>8} {'session files MB':>17} {'folders':>7} {'upload cache MB':>16} {'s':>6}"
    rows = [f"{s.sessions:>8} {s.rss_mb:>8.1f} {s.session_files_mb:>17.2f} {s.session_folders:>7} "
            f"{s.upload_cache_mb:>16.2f} {s.seconds:>6.1f}" for s in samples]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--every", type=int, default=25, help="sample every N sessions")
    parser.add_argument("--ask", type=int, default=0, help="ask a question in every N-th session (0: never)")
    parser.add_argument("--ttl", type=float, default=5.0, help="the app's idle time per session, seconds")
    parser.add_argument("--max-sessions", type=int, default=20)
    parser.add_argument("--json", default=str(ROOT / "results" / "soak.json"))
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    with tempfile.TemporaryDirectory(prefix="v2drop-soak-") as tmp:
        work = Path(tmp)
        image = make_large_image(work / "large.png")
        app = SoakApp(work, ttl=args.ttl, max_sessions=args.max_sessions)
        try:
            samples = run_sessions(app, args.sessions, image, args.every, args.ask, settle=args.ttl + 8)
        finally:
            app.stop()
    print(_table(samples))
    first, warm, last = samples[0], samples[min(2, len(samples) - 1)], samples[-1]
    print(f"\nresident memory: {first.rss_mb:.0f} MB at start, {warm.rss_mb:.0f} MB after {warm.sessions} sessions, "
          f"{last.rss_mb:.0f} MB after {last.sessions} (+{last.rss_mb - warm.rss_mb:.0f} MB since then); temp disk "
          f"after the idle time: {last.session_files_mb:.1f} MB session files, {last.upload_cache_mb:.1f} MB uploads")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "samples": [asdict(s) for s in samples]}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
