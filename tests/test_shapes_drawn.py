"""Drawn pictures (``shapes.drawn``) and the ground-truth patch masks (``shapes.truth``)."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from shapes import drawn, examples, scenes, truth
from shapes.model import build_processor
from shapes.train import pixel_values_from_images


def _model_input(image: Image.Image) -> np.ndarray:
    """The picture as the model sees it: (128, 128, 3) uint8 after the processor's resize."""
    pixels = pixel_values_from_images([image])[0].permute(1, 2, 0).numpy()
    return np.clip((pixels * 0.5 + 0.5) * 255 + 0.5, 0, 255).astype(np.uint8)


def test_held_out_set_cycles_every_condition_with_balanced_types():
    n = 2 * len(drawn.CONDITIONS) * len(scenes.QTYPES)
    held_out = drawn.benchmark(n)
    conditions = Counter(tuple(drawn.condition_of(i).values()) for i in range(n))
    assert len(conditions) == len(drawn.CONDITIONS) == 30 and set(conditions.values()) == {8}
    assert Counter(s.qtype for s in held_out) == {t: n // 4 for t in scenes.QTYPES}
    for i, s in enumerate(held_out[:12]):
        assert s.image.size == drawn.ASPECTS[drawn.condition_of(i)["aspect"]]


def test_held_out_set_is_deterministic_and_not_a_training_stream():
    a, b = drawn.benchmark(8), drawn.benchmark(8)
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    assert drawn.DRAWN_SEED not in (scenes.TRAIN_SEED, scenes.BENCHMARK_SEED)
    assert [s.question for s in a] != [drawn.training_sample(scenes.TRAIN_SEED, i, 1.0).question for i in range(8)]


def test_backgrounds_are_flat_and_of_their_kind():
    for i in range(0, 5 * 24, 24):  # one question per background, anti-aliased squares first
        s, style = drawn.benchmark(i + 1)[i], drawn.held_out_style(i)
        corner = np.asarray(s.image)[0, 0]
        expected = {"white": (255, 255, 255), "black": (0, 0, 0)}.get(style.background)
        if expected is not None:
            assert tuple(corner) == expected
        counts = Counter(map(tuple, np.asarray(s.image).reshape(-1, 3)))
        assert counts.most_common(1)[0][1] > 0.5 * s.image.size[0] * s.image.size[1]  # flat canvas


def test_anti_aliasing_blends_edges_and_its_absence_does_not():
    objects = [scenes.Obj("circle", "red", 64.0, 64.0, 16.0)]
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    sharp = drawn.Style("white", (128, 128), antialias=False).render(objects, rng())
    smooth = drawn.Style("white", (128, 128), antialias=True).render(objects, rng())
    assert len(set(map(tuple, np.asarray(sharp).reshape(-1, 3)))) == 2
    assert len(set(map(tuple, np.asarray(smooth).reshape(-1, 3)))) > 5


def test_white_object_on_white_gets_an_outline():
    objects = [scenes.Obj("square", "white", 64.0, 64.0, 16.0)]
    image = drawn.Style("white", (128, 128), antialias=False).render(objects, np.random.default_rng(0))
    assert (np.asarray(image) < 50).any()


def test_share_zero_is_the_generator_stream_and_share_one_is_always_drawn():
    for i in range(4):
        plain, same = scenes.sample(5, i, n_extra=2), drawn.training_sample(5, i, 0.0, n_extra=2)
        assert np.array_equal(np.asarray(plain.image), np.asarray(same.image)) and plain.extra == same.extra
    sizes = [drawn.training_sample(5, i, 1.0).image.size for i in range(16)]
    assert any(w != h for w, h in sizes) and all(128 <= max(w, h) <= 640 for w, h in sizes)
    shares = [drawn.training_sample(5, i, 0.5).image.size != (128, 128) for i in range(200)]
    assert 0.35 < np.mean(shares) < 0.65


def test_training_pixels_match_the_image_processor_for_any_size():
    processor = build_processor().image_processor
    for s in drawn.benchmark(12)[::4] + [drawn.training_sample(5, 3, 1.0)]:
        expected = processor(s.image, return_tensors="pt")["pixel_values"]
        assert np.allclose(pixel_values_from_images([s.image]).numpy(), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize("size", [(128, 128), (320, 240), (240, 320)])
def test_truth_masks_match_the_drawn_pixels(size):
    """Every object's coverage, from geometry alone, matches the share of each patch that the
    picture (squashed to the model's input) paints in the object's colour."""
    style = drawn.Style("white", size, antialias=False)
    checked = 0
    for index in range(6):
        s = scenes.sample(77, index, style=style)
        painted = (_model_input(s.image).astype(int).sum(axis=2) < 3 * 250)  # anything not white
        painted = painted.reshape(16, 8, 16, 8).mean(axis=(1, 3))
        union = np.zeros((16, 16))
        for o in s.objects:
            union = np.maximum(union, truth.object_coverage(o))
        assert np.abs(painted - union).max() < 0.3 and np.abs(painted - union).mean() < 0.03
        checked += len(s.objects)
    assert checked > 10


def test_question_objects_follow_the_words():
    objs = [scenes.Obj("circle", "red", 20, 20, 10), scenes.Obj("circle", "blue", 100, 100, 10),
            scenes.Obj("star", "red", 20, 100, 10)]
    assert truth.question_objects("how many circles are there ?", objs) == objs[:2]
    assert truth.question_objects("is the red circle on the left or the right ?", objs) == objs[:1]
    assert truth.question_objects("what color is the star ?", objs) == objs[2:]
    assert truth.question_objects("is there a green square ?", objs) == []
    mask = truth.question_mask("is there a blue circle ?", objs)
    assert mask.sum() == truth.object_mask(objs[1]).sum() and mask[truth.centre_patch(objs[1])]
    assert not mask[truth.centre_patch(objs[0])]


def test_benchmark_questions_name_their_objects():
    for s in scenes.benchmark(40):
        named = truth.question_objects(s.question, s.objects)
        expected = 0 if s.answer == "no" else scenes.COUNT_WORDS.index(s.answer) if s.qtype == "count" else 1
        assert len(named) == expected, s.question
        assert truth.question_mask(s.question, s.objects).sum() >= 2 * expected


def test_gallery_keeps_its_objects_and_masks():
    records = examples.load_truth()
    assert set(records) == set(examples.gallery())
    for name, sample in examples.gallery().items():
        on_disk = np.asarray(Image.open(examples.EXAMPLES_DIR / name).convert("RGB"))
        assert np.array_equal(on_disk, np.asarray(sample.image)), name
        objects = truth.objects_from_dicts(records[name]["objects"])
        mask = truth.question_mask(records[name]["question"], objects)
        assert records[name]["question_patches"] == [int(i) for i in mask.nonzero()[0]]
    assert json.loads(json.dumps(records)) == records


def test_caption_reads_top_band_first_in_vocabulary_words():
    objs = [scenes.Obj("star", "red", 100, 90, 14), scenes.Obj("circle", "orange", 20, 10, 9)]
    text = scenes.caption(objs)
    assert text == "a small orange circle at the top left , a large red star at the bottom right ."
    vocab = set(build_processor().tokenizer.get_vocab())
    assert all(word in vocab for word in text.split())
