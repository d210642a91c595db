"""Token counts and patch layouts of the suggested checkpoints (real processor settings, narrowed
fixtures), proven by planting a marker in the image and finding the tokens its pixels fed
(``patch_probe``): each must be a token that the trace's layout and the overlay place over the
marker, and no token placed away from it may change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from transformers.image_processing_utils import select_best_resolution

from benchmarks import checkpoints
from patch_probe import NEWLINE_VALUE, install_probe, vision_embeddings
from studio.inputs import build_inputs, image_region
from v2drop import get_adapter
from v2drop.resolution import apply_cap, pick_cap
from visualize.overlay import patch_boxes

MARKER = (0.5, 0.1, 0.9, 0.6)     # x0, y0, x1, y1 as shares of the image: off-centre, so flips show
PHOTOS = {"astronaut": skdata.astronaut, "coffee": skdata.coffee, "chelsea": skdata.chelsea, "rocket": skdata.rocket}
RESAMPLING_REACH = 2.0  # image pixels a bicubic resize lets a pixel reach, beyond the one-cell margin
SHAPES = {"square": (640, 640), "portrait": (360, 1000), "landscape": (1200, 300), "tiny": (24, 18),
          "very-large": (3000, 2000)}


@pytest.fixture(scope="module", params=checkpoints.NAMES)
def probed(request):
    model, processor = checkpoints.build(request.param)
    install_probe(model)
    return request.param, model, processor


def photo(name: str) -> Image.Image:
    return Image.fromarray(PHOTOS[name]()).convert("RGB")


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def with_marker(image: Image.Image) -> tuple[Image.Image, tuple[float, float, float, float]]:
    w, h = image.size
    box = (MARKER[0] * w, MARKER[1] * h, MARKER[2] * w, MARKER[3] * h)
    marked = image.copy()
    marked.paste((255, 0, 255), tuple(int(round(v)) for v in box))
    return marked, tuple(float(round(v)) for v in box)


def token_boxes(layout, region):
    """``{ordinal: (frame, x0, y0, x1, y1, cell_w, cell_h)}`` in image pixels, as the overlay draws them."""
    x0, y0, x1, y1 = region
    width, height = x1 - x0, y1 - y0
    out = {}
    for i, (frame, bx0, by0, bx1, by1) in patch_boxes(layout, (width, height)).items():
        rows, cols = layout.grids[frame]
        out[i] = (frame, x0 + bx0, y0 + by0, x0 + bx1, y0 + by1, width / cols, height / rows)
    return out


def check_marker(model, processor, image: Image.Image) -> dict:
    """Run the probe on ``image`` with and without the marker and check every token; returns counts."""
    marked, (mx0, my0, mx1, my1) = with_marker(image)
    plain_inputs = build_inputs(processor, [], "what is in the image ?", image)
    marked_inputs = build_inputs(processor, [], "what is in the image ?", marked)
    ids = plain_inputs["input_ids"]
    adapter = get_adapter(model)
    n_tokens = int(torch.isin(ids[0], torch.tensor(adapter.vision_token_ids())).sum())
    plain = vision_embeddings(model, dict(plain_inputs))       # the model raises if its features != tokens
    changed = (vision_embeddings(model, dict(marked_inputs)) - plain).abs().amax(-1) > 1e-4
    layout = adapter.layout(ids, 0, dict(plain_inputs))
    assert layout is not None and len(layout.cells) == n_tokens == plain.shape[0]
    newline = plain[:, 0] == NEWLINE_VALUE
    assert newline.tolist() == [r < 0 for _, r, _ in layout.cells]
    boxes = token_boxes(layout, image_region(processor, image.size))
    inside = {f: 0 for f in range(len(layout.grids))}
    for i, (frame, x0, y0, x1, y1, cw, ch) in boxes.items():
        cw, ch = cw + RESAMPLING_REACH, ch + RESAMPLING_REACH
        if x0 >= mx0 + cw and x1 <= mx1 - cw and y0 >= my0 + ch and y1 <= my1 - ch:
            assert changed[i], f"token {i} (frame {frame}) lies inside the marker but its pixels did not change"
            inside[frame] += 1
        elif x1 <= mx0 - cw or x0 >= mx1 + cw or y1 <= my0 - ch or y0 >= my1 + ch:
            assert not changed[i], f"token {i} (frame {frame}) lies away from the marker but was fed by it"
    assert not changed[newline].any()
    return {"tokens": n_tokens, "grids": layout.grids, "inside": inside}


@pytest.mark.parametrize("image_name", [*PHOTOS, *SHAPES])
def test_marker_tokens_sit_under_the_marker(probed, image_name):
    name, model, processor = probed
    image = photo(image_name) if image_name in PHOTOS else noise(SHAPES[image_name])
    result = check_marker(model, processor, image)
    if min(image.size) >= 64:  # the marker spans several cells of every grid: the check had teeth
        assert all(count > 0 for count in result["inside"].values()), result


def test_onevision_counts_match_the_first_probe():
    """The issue's probe of OneVision's real processor: 3,699 / 2,709 / 3,672 vision tokens."""
    processor = checkpoints.processor("llava-onevision-0.5b")
    counts = {}
    for size in [(512, 512), (600, 400), (1200, 300)]:
        inputs = build_inputs(processor, [], "what is this ?", noise(size))
        counts[size] = int((inputs["input_ids"] == 151646).sum())
    assert counts == {(512, 512): 3699, (600, 400): 2709, (1200, 300): 3672}


@pytest.mark.parametrize("name", ["llava-onevision-0.5b", "llava-next-7b"])
def test_every_anyres_crop_arrangement(name):
    """An image the size of each pinpoint picks that pinpoint's tile grid; every arrangement's
    tokens (OneVision's down-sampled ones included) land under the marker."""
    model, processor = checkpoints.build(name)
    install_probe(model)
    pinpoints = checkpoints.spec(name)["config"]["image_grid_pinpoints"]
    for height, width in pinpoints:
        assert select_best_resolution((height, width), pinpoints) == (height, width)
        result = check_marker(model, processor, noise((width, height), seed=height + width))
        assert result["inside"][0] > 0 and result["inside"][1] > 0, result


@pytest.mark.parametrize("size", [(56, 56), (100, 700), (700, 100), (999, 333), (1280, 720)])
def test_qwen_dynamic_grids(size):
    model, processor = checkpoints.build("qwen2-vl-2b")
    install_probe(model)
    result = check_marker(model, processor, noise(size))
    inputs = build_inputs(processor, [], "what ?", noise(size))
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert result["grids"] == [(h // 2, w // 2)] and result["tokens"] == t * h * w // 4


BASE_CAP_TOKENS = {"llava-1.5-7b": 576, "llava-next-7b": 1026, "llava-onevision-0.5b": 1317, "qwen2-vl-2b": 234,
                   "qwen2.5-vl-3b": 234}   # a 640×480 photo under the "base" image cap


@pytest.mark.parametrize("name", checkpoints.NAMES)
def test_base_cap_cuts_tokens_and_keeps_layouts_right(name):
    model, processor = checkpoints.build(name)
    install_probe(model)
    image = photo("rocket").resize((640, 480))
    full = check_marker(model, processor, image)["tokens"]
    cap = apply_cap(model, processor, "base")
    result = check_marker(model, processor, image)
    assert result["tokens"] == BASE_CAP_TOKENS[name] <= full
    assert all(count > 0 for count in result["inside"].values()), result
    assert cap.name == "base" and cap.label


def test_pick_cap():
    assert pick_cap("auto", "cpu") == "base" and pick_cap("auto", "cuda") == "full"
    assert pick_cap("full", "cpu") == "full" and pick_cap("base", "cuda") == "base"
    with pytest.raises(ValueError, match="image cap"):
        pick_cap("tiny", "cpu")
