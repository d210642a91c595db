"""Video: decoding and sampling (PyAV), model inputs without torchvision, and the engine's
invariants on video prompts (one drop pool over all frames, keep-all exactness, KV cache)."""

import io
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models as tm
import v2drop
from v2drop.video import (CPU_NUM_FRAMES, DecodedVideo, VideoLimits, default_num_frames,
                          load_video, sample_indices, write_video)
from v2drop.video_inputs import (frames_per_layout_frame, layout_frame_to_video_frames, prepare_video,
                                 supports_video, video_inputs)

av = pytest.importorskip("av")

REPO = Path(__file__).resolve().parents[1]
VIDEO_FAMILIES = ("llava_onevision", "qwen2_vl")
ATTNS = ("sdpa", "eager")
SCHEDULE = "2:0.5,4:0.25"
GEN = dict(max_new_tokens=5, do_sample=False)
N_BLOCKS = 20


def bar_frames(n: int = N_BLOCKS, block: int = 8, height: int = 32) -> list[Image.Image]:
    """Frame i: black, with a white bar over columns [block*i, block*(i+1)): the index survives any codec."""
    frames = []
    for i in range(n):
        a = np.zeros((height, block * n, 3), dtype=np.uint8)
        a[:, block * i: block * (i + 1)] = 255
        frames.append(Image.fromarray(a))
    return frames


def bar_index(frame: Image.Image, n: int = N_BLOCKS) -> int:
    cols = np.asarray(frame.convert("L"), dtype=np.float32).mean(0)
    return int(cols.reshape(n, -1).mean(1).argmax())


@pytest.fixture(scope="module")
def bar_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {ext: write_video(folder / f"bars{ext}", bar_frames(), fps=10) for ext in (".mp4", ".webm", ".mov", ".gif")}


def frames_from(seed: int, n: int, size=(64, 48)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = []
    for i in range(n):  # a scene that changes over time: a bright square moving across
        a = base.copy()
        x = int(i * (size[0] - 16) / max(1, n - 1))
        a[10:26, x:x + 16] = 250
        out.append(Image.fromarray(a))
    return out


# ---------------------------------------------------------------------- sampling
def test_sample_indices_uniform():
    assert sample_indices(100, 5) == [0, 25, 50, 74, 99]
    assert sample_indices(32, 8) == [0, 4, 9, 13, 18, 22, 27, 31]
    idx = sample_indices(1000, 16)
    gaps = np.diff(idx)
    assert len(idx) == 16 and idx[0] == 0 and idx[-1] == 999 and gaps.max() - gaps.min() <= 1


def test_sample_indices_short_and_edge_cases():
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]       # fewer frames than asked: each once
    assert sample_indices(8, 8) == list(range(8))
    assert sample_indices(9, 1) == [4]
    assert sample_indices(0, 8) == []
    with pytest.raises(ValueError, match="positive"):
        sample_indices(10, 0)


def test_default_num_frames():
    assert default_num_frames("qwen2_vl") == CPU_NUM_FRAMES            # no device: CPU
    assert default_num_frames("llava_onevision", device="cuda:0") == 32  # the family's own default
    assert default_num_frames("qwen2_5_vl", device="cuda") == 16


# ---------------------------------------------------------------------- decoding
@pytest.mark.parametrize("ext", [".mp4", ".webm", ".mov", ".gif"])
def test_decode_each_container(bar_videos, ext):
    video = load_video(bar_videos[ext], num_frames=5)
    assert isinstance(video, DecodedVideo) and len(video) == 5
    assert video.total_frames == N_BLOCKS
    assert video.indices == sample_indices(N_BLOCKS, 5)
    assert [bar_index(f) for f in video.frames] == video.indices, "each sampled frame is the right one"
    assert all(f.mode == "RGB" and f.size == (8 * N_BLOCKS, 32) for f in video.frames)
    assert video.fps == pytest.approx(10, rel=0.05)
    np.testing.assert_allclose(video.timestamps, np.array(video.indices) / 10, atol=0.02)
    assert video.duration == pytest.approx(2.0, abs=0.15)
    meta = video.metadata()
    assert meta["frames_indices"] == video.indices and meta["total_num_frames"] == N_BLOCKS


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".gif"])
def test_seeking_equals_sequential_decoding(bar_videos, ext):
    sequential = load_video(bar_videos[ext], num_frames=6, seek_after=None)
    seeking = load_video(bar_videos[ext], num_frames=6, seek_after=0)
    assert seeking.indices == sequential.indices
    assert [bar_index(f) for f in seeking.frames] == seeking.indices
    for a, b in zip(seeking.frames, sequential.frames):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert seeking.timestamps == pytest.approx(sequential.timestamps)


def test_decode_short_video_bytes_and_file_object(bar_videos):
    data = bar_videos[".mp4"].read_bytes()
    from_bytes = load_video(data, num_frames=64)            # more frames asked than the video has
    assert from_bytes.indices == list(range(N_BLOCKS))
    still = write_video(bar_videos[".gif"].with_name("still.gif"), bar_frames()[:1])
    one = load_video(still, num_frames=8)
    assert len(one) == 1 and one.indices == [0] and one.total_frames == 1
    from_file = load_video(io.BytesIO(data), num_frames=3, max_side=40)
    assert [bar_index(f) for f in from_file.frames] == [0, 10, 19]
    assert max(from_file.frames[0].size) == 40


def _clean_value_error(excinfo) -> str:
    assert type(excinfo.value) is ValueError, f"a raw {type(excinfo.value).__name__} escaped"
    return str(excinfo.value)


def test_unreadable_and_empty_files(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError) as e:
        load_video(junk)
    assert "could not read junk.mp4" in _clean_value_error(e)

    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    with pytest.raises(ValueError) as e:
        load_video(empty)
    assert "empty" in _clean_value_error(e)

    with pytest.raises(ValueError) as e:
        load_video(tmp_path / "missing.mp4")
    assert "no such file" in _clean_value_error(e)

    no_frames = tmp_path / "no_frames.mkv"           # a header with a video stream, no frame
    with av.open(str(no_frames), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(10))
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()
    with pytest.raises(ValueError) as e:
        load_video(no_frames)
    assert "no video frames" in _clean_value_error(e) or "could not" in str(e.value)

    audio = tmp_path / "sound.wav"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(ValueError) as e:
        load_video(audio)
    assert "no video stream" in _clean_value_error(e)


def test_truncated_file_never_raises_raw_errors(bar_videos, tmp_path):
    data = bar_videos[".webm"].read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: len(data) // 2])
    try:
        video = load_video(cut, num_frames=8)
    except ValueError:
        return
    assert len(video) >= 1 and all(f.mode == "RGB" for f in video.frames)


@pytest.mark.parametrize("limits, message", [
    (VideoLimits(max_duration=1.0), "over the 1 s limit"),
    (VideoLimits(max_frames=10), "over the .*frame limit|more than 10 frames"),
    (VideoLimits(max_bytes=100), "over the .* limit for videos"),
    (VideoLimits(max_pixels=1000), "pixel limit"),
])
def test_limits(bar_videos, limits, message):
    for ext in (".mp4", ".webm", ".gif"):
        with pytest.raises(ValueError, match=message) as e:
            load_video(bar_videos[ext], limits=limits)
        _clean_value_error(e)


def test_shipped_examples_are_small_and_load():
    folder = REPO / "assets" / "videos"
    files = sorted(p for p in folder.iterdir() if p.suffix in (".mp4", ".webm", ".gif", ".mov"))
    assert {p.suffix for p in files} >= {".mp4", ".webm", ".gif"}
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000
    notes = json.loads((folder / "examples.json").read_text())
    for path in files:
        assert path.name in notes
        video = load_video(path, num_frames=4)
        assert len(video) == 4 and video.total_frames >= 16


# ---------------------------------------------------------------------- model inputs
def test_supports_video(tiny):
    for family in tm.FAMILIES:
        model, _ = tiny(family, "sdpa")
        assert supports_video(model) == (family in ("llava_onevision", "qwen2_vl", "qwen2_5_vl")), family
    assert not supports_video("llava")                     # the embedded shapes model is a llava
    model, processor = tiny("llava", "sdpa")
    with pytest.raises(ValueError, match="does not take video"):
        prepare_video(model, processor, b"", "what")


def _hf_qwen_patchify(videos: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int):
    """``Qwen2VLVideoProcessor.patchify`` of transformers 5.24, verbatim (it needs torch only)."""
    batch_size, num_frames, channel, resized_height, resized_width = videos.shape
    if pad := -num_frames % temporal_patch_size:
        repeats = videos[:, -1:].expand(-1, pad, -1, -1, -1)
        videos = torch.cat((videos, repeats), dim=1)
        num_frames += pad
    grid_t = num_frames // temporal_patch_size
    grid_h, grid_w = resized_height // patch_size, resized_width // patch_size
    patches = videos.view(batch_size, grid_t, temporal_patch_size, channel, grid_h // merge_size, merge_size,
                          patch_size, grid_w // merge_size, merge_size, patch_size)
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    flat = patches.reshape(batch_size, grid_t * grid_h * grid_w, channel * temporal_patch_size * patch_size * patch_size)
    return flat, grid_t, grid_h, grid_w


@pytest.mark.parametrize("num_frames", [4, 5])
def test_qwen_video_pixels_match_transformers(tiny, num_frames):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    _, processor = tiny("qwen2_vl", "sdpa")
    ip = processor.image_processor
    frames = frames_from(1, num_frames, size=(90, 60))
    inputs = video_inputs(processor, frames, "what is in the image ?")
    # the video processor's steps: smart_resize, bicubic resize, rescale, normalise, patchify
    h, w = smart_resize(60, 90, factor=ip.patch_size * ip.merge_size, min_pixels=ip.size["shortest_edge"],
                        max_pixels=ip.size["longest_edge"])
    mean, std = np.array(ip.image_mean).reshape(3, 1, 1), np.array(ip.image_std).reshape(3, 1, 1)
    stack = np.stack([((np.asarray(f.resize((w, h), Image.Resampling.BICUBIC), np.float32).transpose(2, 0, 1) / 255)
                       - mean) / std for f in frames]).astype(np.float32)
    ref, t, gh, gw = _hf_qwen_patchify(torch.from_numpy(stack)[None], ip.patch_size, ip.merge_size, 2)
    assert inputs["video_grid_thw"].tolist() == [[t, gh, gw]] and t == math.ceil(num_frames / 2)
    torch.testing.assert_close(inputs["pixel_values_videos"], ref[0], atol=1e-4, rtol=0)
    # a video of one image shown twice is that image
    image_inputs = ip(images=[frames[0]], return_tensors="pt")
    twice = video_inputs(processor, [frames[0], frames[0]], "what")
    torch.testing.assert_close(twice["pixel_values_videos"], image_inputs["pixel_values"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_prompt_expansion_and_token_types(tiny, family):
    model, processor = tiny(family, "sdpa")
    video = DecodedVideo(frames=frames_from(2, 6), timestamps=[0.5 * i for i in range(6)], indices=[0, 3, 6, 9, 12, 15],
                         total_frames=16, fps=6.0, duration=16 / 6, width=64, height=48)
    inputs = video_inputs(processor, video, "what is in the image ?")
    t, h, w = inputs["video_grid_thw"][0].tolist()
    ids = inputs["input_ids"][0]
    is_video = ids == model.config.video_token_id
    assert int(is_video.sum()) == t * h * w // 4 and t == 3
    assert inputs["mm_token_type_ids"][0].tolist() == [2 if v else 0 for v in is_video.tolist()]
    assert inputs["pixel_values_videos"].shape == (t * h * w, 3 * 2 * 14 * 14)
    if family == "qwen2_5_vl":  # 2 frames per slice at the sampled rate (6 of 16 frames at 6 fps)
        assert inputs["second_per_grid_ts"].tolist() == pytest.approx([2 / (6 / 16 * 6)])
    chat = [{"role": "user", "content": [{"type": "video", "path": "ignored.mp4"}, {"type": "text", "text": "what"}]}]
    assert int((video_inputs(processor, video, chat)["input_ids"] == model.config.video_token_id).sum()) == t * h * w // 4
    with pytest.raises(ValueError, match="exactly one"):
        video_inputs(processor, video, [{"role": "user", "content": [{"type": "text", "text": "what"}]}])


def test_onevision_inputs(tiny):
    model, processor = tiny("llava_onevision", "sdpa")
    frames = frames_from(3, 5)
    inputs = video_inputs(processor, frames, "what is in the image ?")
    side = model.config.vision_config.image_size
    assert inputs["pixel_values_videos"].shape == (1, 5, 3, side, side)
    pooled = math.ceil(side // model.config.vision_config.patch_size / 2)
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 5 * pooled ** 2 + 1
    # each frame is what the image processor makes of it as a base image (square input)
    square = [f.resize((48, 48)) for f in frames]
    base = processor.image_processor(images=[square[2]], return_tensors="pt")["pixel_values"][0, 0]
    video = video_inputs(processor, square, "what")["pixel_values_videos"][0, 2]
    torch.testing.assert_close(video, base, atol=1e-5, rtol=0)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what"}]}],
        add_generation_prompt=True, tokenize=False)
    assert torch.equal(video_inputs(processor, square, text)["input_ids"], video_inputs(processor, square, "what")["input_ids"])


# ---------------------------------------------------------------------- engine on video prompts
def _video_batch(processor, n_frames=6, seed=5):
    return video_inputs(processor, frames_from(seed, n_frames), "what is in the image ? describe it")


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_keep_all_is_exact(tiny, family, attn):
    model, processor = tiny(family, attn)
    inputs = _video_batch(processor)
    trace = tm.assert_keep_all_exact(model, inputs, gen=GEN)
    sample = trace.samples[0]
    assert sample.num_vision_tokens == int(torch.isin(inputs["input_ids"], torch.tensor(model.config.video_token_id)).sum())
    assert sample.alive_per_layer == [sample.num_vision_tokens] * 6


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_cache_equals_no_cache(tiny, family, attn):
    model, processor = tiny(family, attn)
    tm.assert_cache_equals_no_cache(model, _video_batch(processor), SCHEDULE, GEN)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl", "qwen2_5_vl"])
def test_one_pool_over_all_frames_and_layout(tiny, family):
    """One top-k over every frame's tokens (not per frame); the layout maps every kept ordinal to
    (frame, row, col), in generate() (grids gone from the kwargs) as in a plain forward."""
    model, processor = tiny(family, "sdpa")
    n_frames = 8
    inputs = _video_batch(processor, n_frames=n_frames)
    with v2drop.apply(model, SCHEDULE) as run:
        model.generate(**inputs, **GEN)
        generated = run.trace.samples[0]
        with torch.no_grad():
            model(**inputs)
        forward = run.trace.samples[0]
    assert generated.layout is not None and forward.layout is not None
    assert generated.layout == forward.layout
    sample, layout = generated, generated.layout
    n = sample.num_vision_tokens
    assert len(layout.cells) == n
    assert len(sample.scores[2]["index"]) == n, "layer 2 scores every token of every frame"
    assert len(sample.kept[2]) == n // 2

    step = frames_per_layout_frame(model)
    assert len(layout.grids) == math.ceil(n_frames / step) and set(layout.kinds) == {"video"}
    if family.startswith("qwen"):
        t, h, w = inputs["video_grid_thw"][0].tolist()
        assert layout.grids == [(h // 2, w // 2)] * t
        assert layout_frame_to_video_frames(model, 1, n_frames) == [2, 3]
    else:
        pooled = math.ceil(model.config.vision_config.image_size // model.config.vision_config.patch_size / 2)
        assert layout.grids == [(pooled, pooled)] * n_frames and layout.cells[-1][1:] == (-1, -1)
        assert layout_frame_to_video_frames(model, 1, n_frames) == [1]
    for i, (f, r, c) in enumerate(layout.cells):
        rows, cols = layout.grids[f]
        assert (r, c) == (-1, -1) or (0 <= r < rows and 0 <= c < cols)
    patch_cells = [cell for cell in layout.cells if cell[1] >= 0]
    assert len(set(patch_cells)) == len(patch_cells), "every cell is one token"
    frames_kept = {layout.cells[i][0] for i in sample.kept[2]}
    assert len(frames_kept) >= 2, "the kept tokens span several frames"
    per_frame = [sum(1 for i in sample.kept[2] if layout.cells[i][0] == f) for f in range(len(layout.grids))]
    assert sum(per_frame) == len(sample.kept[2])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_real_video_processor_branch(tiny, family):
    """With a video processor present (torchvision installed), video_inputs calls the processor
    itself; here a stand-in plays the real one, checking the plumbing gives the same inputs."""
    import copy

    from v2drop.video_inputs import _stand_in
    _, processor = tiny(family, "sdpa")
    video = DecodedVideo(frames=frames_from(4, 4), timestamps=[0, 1, 2, 3], indices=[0, 8, 16, 24], total_frames=25,
                         fps=8.0, duration=25 / 8, width=64, height=48)
    with_video = copy.copy(processor)
    with_video.video_processor = _stand_in(processor, None)
    expected = video_inputs(processor, video, "what")
    got = video_inputs(with_video, video, "what")
    assert sorted(got.keys()) == sorted(expected.keys())
    for key in expected:
        assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(expected[key])), key


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_image_layout_under_generate(tiny, family):
    """generate() drops image_grid_thw from the forward's kwargs: the layout then comes from the
    M-RoPE ids and must equal the grid-based one of a plain forward (images too, padded batch)."""
    model, processor = tiny(family, "sdpa")
    inputs = tm.inputs(processor, [tm.image(1, (64, 64)), tm.image(2, (64, 64))], ["what", "how many red shape are there"])
    with v2drop.apply(model, SCHEDULE) as run:
        model.generate(**inputs, **GEN)
        generated = [s.layout for s in run.trace.samples]
        with torch.no_grad():
            model(**inputs)
        forward = [s.layout for s in run.trace.samples]
    assert generated[0] is not None and generated == forward
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert generated[1].grids == [(h // 2, w // 2)] and generated[1].kinds == ["image"]


def test_example_clips_are_reproduced_by_shapes_videos(tmp_path):
    from shapes import videos

    videos.main(["--out", str(tmp_path)])
    assert (tmp_path / "examples.json").read_text() == (REPO / "assets" / "videos" / "examples.json").read_text()
    for name in videos.EXAMPLES:
        ours, shipped = load_video(tmp_path / name, num_frames=4), load_video(REPO / "assets" / "videos" / name, num_frames=4)
        assert ours.total_frames == shipped.total_frames and ours.indices == shipped.indices
        assert (ours.width, ours.height) == (shipped.width, shipped.height)
