"""The Chromium set-up shared by the browser tests. ``sync_api()``, called at a test module's top,
skips that module when Playwright or Chromium is missing (install both with ``.ci/install-browser``)."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("V2DROP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SHOTS = ROOT / "results" / "e2e"


def sync_api():
    """Playwright's sync API, or a module-level skip."""
    api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (run .ci/install-browser)")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (run .ci/install-browser: apt-get install chromium)",
                    allow_module_level=True)
    return api
