"""studio's model side (inputs, videos, pair, schedules, registry): safe image/prompt input, multi-turn
inputs for every family, the interleaved unpruned / V²Drop streaming loop (same answers as generate),
the model cache and its errors."""

import struct
import zlib

import pytest
import torch
from PIL import Image

import tiny_models
import v2drop
from studio.inputs import ChatInputError, build_inputs, build_messages, check_prompt, image_region, load_image
from studio.pair import stream_pair
from studio.registry import EMBEDDED_ID, ModelLoadError, ModelRegistry
from studio.schedules import presets_for, schedule_summary
from v2drop.schedule import DropSchedule

SCHEDULE = "2:0.5,4:0.5"


# ------------------------------------------------------------------------------ bad input
def test_corrupt_and_non_image_files_are_refused(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path in (bad, text):
        with pytest.raises(ChatInputError, match="not a readable image"):
            load_image(str(path))
    with pytest.raises(ChatInputError, match="No image"):
        load_image(None)
    with pytest.raises(ChatInputError, match="could not be found"):
        load_image(str(tmp_path / "missing.png"))


def _png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width``×``height`` (a decompression bomb's signature)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_claiming(40_000, 40_000))  # 1.6 gigapixels in 100 bytes
    with pytest.raises(ChatInputError, match="too large to decode safely"):
        load_image(str(bomb))
    assert Image.MAX_IMAGE_PIXELS == 89_478_485 or Image.MAX_IMAGE_PIXELS is not None  # limit restored


def test_huge_resolution_is_downscaled_and_said(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (4000, 500), (10, 200, 30)).save(path)
    image, notes = load_image(str(path), max_side=1000)
    assert image.size == (1000, 125)
    assert notes and "downscaled" in notes[0] and "4000×500" in notes[0]
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(rgba)
    image, notes = load_image(str(rgba))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255) and not notes


def test_prompts_empty_or_too_long_are_refused():
    assert check_prompt("  what color ?  ") == "what color ?"
    for empty in ("", "   \n", None):
        with pytest.raises(ChatInputError, match="empty"):
            check_prompt(empty)
    with pytest.raises(ChatInputError, match="limit is 1000"):
        check_prompt("x" * 1001)


def test_impossible_schedules_are_explained(tiny):
    model, _ = tiny("llava")
    for text, why in [("9:0.5", "outside the model"), ("0:0.5", "layer 0"), ("3:1.5", "outside \\[0, 1\\]"),
                      ("3:0.5,2:0.5", "increasing order"), ("3-0.5", "layer:keep_ratio")]:
        with pytest.raises(ValueError, match=why):
            schedule_summary(DropSchedule.parse(text), model, 64)
    ok = schedule_summary(DropSchedule.parse("2:0.5,4:0"), model, 64)
    assert ok["alive_per_layer"] == [64, 64, 32, 32, 0, 0]
    assert ok["average_kept"] == pytest.approx(192 / 6) and 0 < ok["flops_saving"] < 1


# ------------------------------------------------------------------------------ inputs
def test_messages_put_the_image_in_the_first_turn_only():
    msgs = build_messages([("q1", "a1")], "q2")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0]["content"][0] == {"type": "image"}
    assert all(c["type"] == "text" for c in msgs[2]["content"])


@pytest.mark.parametrize("family", tiny_models.FAMILIES)
def test_inputs_for_every_family_have_one_image(tiny, family):
    model, processor = tiny(family)
    inputs = build_inputs(processor, [("what is it", "a cat")], "and the color", tiny_models.image(1, (64, 48)))
    ids = inputs["input_ids"][0]
    vision = torch.isin(ids, torch.tensor(v2drop.get_adapter(model).vision_token_ids()))
    runs = (vision[1:] & ~vision[:-1]).sum() + int(vision[0])
    assert inputs["input_ids"].shape[0] == 1 and vision.sum() > 0 and runs >= 1
    assert "pixel_values" in inputs


def test_image_region_centre_crop_for_clip_processors(tiny):
    _, processor = tiny("llava")  # CLIPImageProcessor: shortest edge 64 + 64×64 centre crop
    assert image_region(processor, (200, 100)) == pytest.approx((50, 0, 150, 100))
    _, qwen = tiny("qwen2_vl")
    assert image_region(qwen, (200, 100)) == (0, 0, 200, 100)


# ------------------------------------------------------------------------------ streaming pair
def _run(model, processor, image, question, hf=(), hd=(), schedule=SCHEDULE, n=5):
    events = list(stream_pair(model, processor, image, question, list(hf), list(hd), schedule, max_new_tokens=n))
    return events


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_stream_pair_matches_generate_and_interleaves(tiny, family):
    model, processor = tiny(family)
    image = tiny_models.image(2)
    events = _run(model, processor, image, "what is in the image")
    final = events[-1]
    assert final.done and final.trace is not None
    # both first tokens arrive before either answer is finished (interleaved, not one after the other)
    first_both = next(i for i, e in enumerate(events) if e.full.tokens and e.drop.tokens)
    assert not events[first_both].full_done or not events[first_both].drop_done
    assert events[0].full.tokens == 1 and events[0].drop.tokens == 0
    # same greedy answers as generate, with and without V²Drop
    inputs = build_inputs(processor, [], "what is in the image", image)
    full_ids, drop_ids = tiny_models.greedy_answers(model, inputs, SCHEDULE, max_new_tokens=5)
    assert final.full_text == tiny_models.decode_answer(processor.tokenizer, full_ids)
    assert final.drop_text == tiny_models.decode_answer(processor.tokenizer, drop_ids)
    s = final.trace.samples[0]
    assert s.alive_per_layer[2] < s.alive_per_layer[1] and sorted(s.kept) == [2, 4]
    assert len(s.scores) >= 4  # trace_all_layers: variation at every layer but 0
    f, d = final.full, final.drop
    assert f.prefill_seconds > 0 and d.prefill_seconds > 0 and f.first_shown_seconds <= d.first_shown_seconds
    # each run's time to first token is its own (inputs + prefill): V²Drop is not charged for the
    # unpruned prefill that ran before it, which the wall clock since the request does include
    for run in (f, d):
        assert run.first_token_seconds == pytest.approx(run.inputs_seconds + run.prefill_seconds)
    assert d.first_token_seconds < d.first_shown_seconds
    assert d.kv_cache_bytes < f.kv_cache_bytes
    assert f.vision_tokens == s.num_vision_tokens > 0


def test_multi_turn_keeps_each_runs_own_history(tiny):
    model, processor = tiny("llava_onevision")
    image = tiny_models.image(4, (64, 32))
    first = _run(model, processor, image, "what is it", n=3)[-1]
    second = _run(model, processor, image, "and the color", [("what is it", first.full_text)],
                  [("what is it", first.drop_text)], n=3)[-1]
    assert second.full.prompt_tokens > first.full.prompt_tokens
    assert second.trace.samples[0].num_vision_tokens == first.trace.samples[0].num_vision_tokens


def test_model_state_is_restored_after_a_pair(tiny):
    model, processor = tiny("llava")
    image = tiny_models.image(5)
    inputs = build_inputs(processor, [], "describe it", image)
    with torch.inference_mode():
        before = model(**inputs).logits
    _run(model, processor, image, "describe it", n=2)
    with torch.inference_mode():
        after = model(**inputs).logits
    assert torch.equal(before, after)
    assert not any(layer._forward_pre_hooks for layer in v2drop.get_adapter(model).decoder_layers())


# ------------------------------------------------------------------------------ model cache
def test_registry_embedded_and_failing_loads_leave_the_cache(tmp_path):
    registry = ModelRegistry(max_extra=1, device="cpu", embedded_dir=str(tmp_path / "no-weights"))
    emb = registry.embedded()
    assert emb.model_id == EMBEDDED_ID and not emb.trained and "UNTRAINED" in emb.label
    assert registry.get(None) is emb
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache|not a known model"):
        registry.load("nobody/does-not-exist-v2drop")
    with pytest.raises(ModelLoadError, match="does not look like a model id"):
        registry.load("a\nb")
    # a text-only model: loads as nothing this app supports
    from transformers import Qwen2Config, Qwen2ForCausalLM
    text_only = tmp_path / "text-only"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(text_only)
    with pytest.raises(ModelLoadError, match="not an image-text-to-text model|not supported"):
        registry.load(str(text_only))
    assert registry.loaded_ids() == [EMBEDDED_ID]
    names = [n for n, _, _ in presets_for(emb.model, emb.is_embedded)]
    assert names[0] == "default" and names[1].startswith("shapes-")  # the rule's default, then its own presets


def test_registry_load_lets_cancellation_through(tmp_path, monkeypatch):
    """Only ``Exception`` becomes a ModelLoadError: a cancelled or interrupted load stays one, and the
    cache is unchanged."""
    import asyncio

    import v2drop.loading

    registry = ModelRegistry(max_extra=1, device="cpu", embedded_dir=str(tmp_path / "none"))
    for raised in (asyncio.CancelledError, KeyboardInterrupt):
        def cancelled(*_args, **_kwargs):
            raise raised()

        monkeypatch.setattr(v2drop.loading, "load_model", cancelled)
        with pytest.raises(raised):
            registry.load("someone/some-model")
        assert registry.loaded_ids() == [EMBEDDED_ID] and registry.loads == 0
    monkeypatch.setattr(v2drop.loading, "load_model", lambda *a, **k: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        registry.load("someone/some-model")


def test_registry_loads_a_local_folder_and_evicts_lru(tmp_path):
    registry = ModelRegistry(max_extra=1, device="cpu", embedded_dir=str(tmp_path / "none"))
    tiny_models.build("llava", tmp_path / "a")
    tiny_models.build("qwen2_vl", tmp_path / "b")
    calls = []
    a = registry.load(str(tmp_path / "a" / "llava"), progress=lambda f, m: calls.append(f))
    assert calls and calls[-1] == 1.0 and registry.get(a.model_id) is a
    registry.load(str(tmp_path / "b" / "qwen2_vl"))
    with pytest.raises(KeyError):
        registry.get(a.model_id)
    assert len(registry.loaded_ids()) == 2


def test_stream_pair_survives_being_resumed_from_other_threads(tiny):
    """Gradio resumes a streaming handler in whichever worker thread is free; grad mode is
    thread-local, so every step must set inference mode itself."""
    from concurrent.futures import ThreadPoolExecutor

    model, processor = tiny("llava")
    gen = stream_pair(model, processor, tiny_models.image(7), "what is it", [], [], SCHEDULE, max_new_tokens=4)
    events = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        while True:
            event = pool.submit(lambda: next(gen, None)).result()
            if event is None:
                break
            events.append(event)
    assert events[-1].done and events[-1].trace is not None


# ------------------------------------------------------------------------------ video
from pathlib import Path  # noqa: E402

from studio.videos import (MAX_VIDEO_FRAMES, build_video_inputs, build_video_messages, check_num_frames,  # noqa: E402
                           check_video_model, load_video_file)

VIDEOS = Path(__file__).resolve().parents[1] / "assets" / "videos"


def test_video_files_unreadable_empty_missing_or_too_long_are_refused(tmp_path):
    with pytest.raises(ChatInputError, match="No video"):
        load_video_file(None, 4)
    with pytest.raises(ChatInputError, match="could not be found"):
        load_video_file(tmp_path / "gone.mp4", 4)
    (tmp_path / "junk.mp4").write_bytes(b"\x00not a video at all" * 50)
    (tmp_path / "empty.webm").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    for name in ("junk.mp4", "empty.webm", "notes.txt"):
        with pytest.raises(ChatInputError, match="cannot be used") as err:
            load_video_file(tmp_path / name, 4)
        assert "Traceback" not in str(err.value)
    with pytest.raises(ChatInputError, match="supported formats: mp4"):
        load_video_file(tmp_path / "notes.txt", 4)
    from v2drop.video import VideoLimits
    with pytest.raises(ChatInputError, match="cannot be used"):
        load_video_file(VIDEOS / "moving_shapes.mp4", 4, limits=VideoLimits(max_duration=0.5))
    for bad in (0, MAX_VIDEO_FRAMES + 1, "many", None):
        with pytest.raises(ChatInputError, match="frames"):
            check_num_frames(bad)
    assert check_num_frames(8.0) == 8


def test_video_shipped_examples_decode_to_the_asked_frame_count():
    for name in ("moving_shapes.mp4", "object_appears.webm", "count_up.gif"):
        video = load_video_file(VIDEOS / name, 5)
        assert len(video) == 5 and len(video.timestamps) == 5


def test_non_video_models_are_refused_with_the_video_models_named(tiny):
    video = load_video_file(VIDEOS / "count_up.gif", 2)
    for family in ("llava", "llava_next"):
        model, processor = tiny(family)
        with pytest.raises(ChatInputError, match="takes no video.*LLaVA-OneVision, Qwen2-VL and Qwen2.5-VL"):
            check_video_model(model)
        with pytest.raises(ChatInputError, match="takes no video"):
            next(stream_pair(model, processor, video, "what", [], [], SCHEDULE, max_new_tokens=2))
    check_video_model(tiny("llava_onevision")[0])  # no error


def test_video_messages_put_the_video_in_the_first_turn_only():
    messages = build_video_messages([("q1", "a1")], "q2")
    kinds = [c["type"] for m in messages for c in m["content"]]
    assert kinds == ["video", "text", "text", "text"] and messages[0]["role"] == "user"


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_video_stream_pair_matches_generate_and_continues(tiny, family):
    model, processor = tiny(family)
    video = load_video_file(VIDEOS / "moving_shapes.mp4", 4)
    question = "what is in the image"
    final = _run(model, processor, video, question, n=4)[-1]
    inputs = build_video_inputs(processor, [], question, video)
    full_ids, drop_ids = tiny_models.greedy_answers(model, inputs, SCHEDULE, max_new_tokens=4)
    assert final.full_text == tiny_models.decode_answer(processor.tokenizer, full_ids)
    assert final.drop_text == tiny_models.decode_answer(processor.tokenizer, drop_ids)
    s = final.trace.samples[0]
    video_id = model.config.video_token_id
    assert s.num_vision_tokens == int((inputs["input_ids"] == video_id).sum()) == final.full.vision_tokens
    assert set(s.layout.kinds) == {"video"} and sorted(s.kept) == [2, 4] and s.alive_per_layer[2] < s.alive_per_layer[1]
    # a second turn continues each run's own conversation about the same video
    second = _run(model, processor, video, "and the color", [(question, final.full_text)],
                  [(question, final.drop_text)], n=2)[-1]
    assert second.full.prompt_tokens > final.full.prompt_tokens
    assert second.trace.samples[0].num_vision_tokens == s.num_vision_tokens


def test_decode_speed_needs_enough_steps():
    """A one-word answer is one decode step: its speed is noise, so none is given (the page says
    "too short"); from MIN_DECODE_STEPS steps on it is steps / decode time."""
    from studio.pair import MIN_DECODE_STEPS, RunStats
    from visualize.charts import metrics_rows, too_short

    short = RunStats("V²Drop", tokens=2, decode_seconds=0.01, prefill_seconds=0.1)
    assert short.decode_steps == 1 and short.decode_tokens_per_second is None
    enough = RunStats("V²Drop", tokens=MIN_DECODE_STEPS + 1, decode_seconds=0.4, prefill_seconds=0.1)
    assert enough.decode_tokens_per_second == pytest.approx(MIN_DECODE_STEPS / 0.4)
    assert RunStats("x", tokens=MIN_DECODE_STEPS, decode_seconds=0.4).decode_tokens_per_second is None
    assert too_short(short.to_dict()) == "too short (1 step)" and too_short(enough.to_dict()) is None
    row = next(r for r in metrics_rows(short.to_dict(), enough.to_dict()) if r[0].startswith("Decode"))
    assert row[1] == "too short (1 step)" and row[2] == f"{MIN_DECODE_STEPS / 0.4:.4g}" and row[3] == "–"
