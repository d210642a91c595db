"""The operator's image cap in the app: applied at load (auto = base on CPU), shown in the model
card and next to the image with the token count it gives."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import app
from benchmarks import checkpoints
from studio.image_cap import image_caption
from studio.registry import ModelRegistry


@pytest.fixture(scope="module")
def onevision_folder(tmp_path_factory):
    return str(checkpoints.save("llava-onevision-0.5b", tmp_path_factory.mktemp("ov") / "ov"))


@pytest.mark.parametrize("cap, tokens", [("auto", 1317), ("base", 1317), ("full", 2929)])
def test_cap_is_applied_at_load_and_captioned(onevision_folder, cap, tokens):
    registry = ModelRegistry(device="cpu", image_cap=cap)
    entry = registry.load(onevision_folder)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    caption = image_caption(entry, photo)
    assert f"{tokens:,} vision tokens" in caption
    assert ("base resolution" in caption) == (cap != "full")
    assert registry.card(onevision_folder).image_cap == entry.image_cap


def test_launch_flag_and_environment(monkeypatch):
    assert app.parse_args([]).image_cap == "auto"
    assert app.parse_args(["--image-cap", "full"]).image_cap == "full"
    monkeypatch.setenv("V2DROP_IMAGE_CAP", "base")
    assert app.parse_args([]).image_cap == "base"
    with pytest.raises(SystemExit):
        app.parse_args(["--image-cap", "huge"])


def test_the_line_under_the_image(onevision_folder, tmp_path):
    from studio.handlers import Studio
    from studio.sessions import FrameCache, SessionStore
    from studio.state import PageState

    registry = ModelRegistry(device="cpu", image_cap="base")
    registry.load(onevision_folder)
    studio = Studio(registry, SessionStore(tmp_path / "sessions"), FrameCache(max_bytes=1 << 20))
    state = PageState(model_id=onevision_folder)
    assert studio.image_info(state) == ""                                  # no image yet
    Image.fromarray(np.zeros((480, 640, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    state.image = str(tmp_path / "photo.png")
    assert "1,317 vision tokens" in studio.image_info(state)
    assert "256 vision tokens" in studio.image_info(PageState(image=state.image))   # the embedded model
