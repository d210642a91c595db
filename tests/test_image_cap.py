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


def test_cpu_dtype_choice(tmp_path, monkeypatch):
    import torch

    from v2drop import loading

    fast, slow = tmp_path / "fast", tmp_path / "slow"
    fast.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 avx512_bf16\n")
    slow.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert loading.cpu_has_fast_bf16(str(fast)) and not loading.cpu_has_fast_bf16(str(slow))
    assert not loading.cpu_has_fast_bf16(str(tmp_path / "missing"))
    assert loading.cpu_dtype("float32") == torch.float32 and loading.cpu_dtype("bfloat16") == torch.bfloat16
    monkeypatch.setattr(loading, "cpu_has_fast_bf16", lambda: False)
    assert loading.cpu_dtype("auto") == torch.float32
    assert ModelRegistry(device="cpu", cpu_dtype="auto").dtype == torch.float32
    with pytest.raises(ValueError, match="CPU dtype"):
        loading.cpu_dtype("int8")
    assert app.parse_args(["--cpu-dtype", "bfloat16"]).cpu_dtype == "bfloat16"
