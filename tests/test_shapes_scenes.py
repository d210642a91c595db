"""The Shapes scene/question generator: determinism, balance, unambiguous questions."""

from collections import Counter

import numpy as np
import pytest

from shapes import scenes


def _pixels(s):
    return np.asarray(s.image)


def test_same_seed_same_sample():
    for i in range(6):
        a, b = scenes.sample(7, i, n_extra=3), scenes.sample(7, i, n_extra=3)
        assert np.array_equal(_pixels(a), _pixels(b))
        assert (a.question, a.answer, a.qtype, a.extra) == (b.question, b.answer, b.qtype, b.extra)


def test_different_seed_different_sample():
    a, b = scenes.sample(7, 0), scenes.sample(8, 0)
    assert not np.array_equal(_pixels(a), _pixels(b))
    qa = [scenes.sample(7, i).question for i in range(8)]
    qb = [scenes.sample(8, i).question for i in range(8)]
    assert qa != qb


def test_image_format():
    s = scenes.sample(1, 0)
    assert s.image.size == (128, 128) and s.image.mode == "RGB"
    assert 3 <= len(s.objects) <= 7


def test_benchmark_deterministic_and_balanced():
    b1, b2 = scenes.benchmark(48), scenes.benchmark(48)
    assert [s.question for s in b1] == [s.question for s in b2]
    assert all(np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(b1[:4], b2[:4]))
    assert Counter(s.qtype for s in b1) == {t: 12 for t in scenes.QTYPES}
    ex = Counter(s.answer for s in b1 if s.qtype == "exist")
    assert ex["yes"] == ex["no"]
    cnt = Counter(s.answer for s in b1 if s.qtype == "count")
    assert set(cnt.values()) == {3}
    # held-out: the benchmark seed differs from the training seed
    assert scenes.BENCHMARK_SEED != scenes.TRAIN_SEED
    assert b1[0].question != scenes.sample(scenes.TRAIN_SEED, 0).question or not np.array_equal(
        _pixels(b1[0]), _pixels(scenes.sample(scenes.TRAIN_SEED, 0)))


def _check(objects, q, a, t):
    words = q.replace("?", "").split()
    if t == "color":
        shape = words[-1]
        hits = [o for o in objects if o.shape == shape]
        assert len(hits) == 1 and hits[0].color == a
    elif t == "count":
        shape = next(s for s, p in scenes.PLURAL.items() if p in words)
        assert scenes.COUNT_WORDS[sum(o.shape == shape for o in objects)] == a
    elif t == "exist":
        color, shape = words[-2], words[-1]
        present = any((o.color, o.shape) == (color, shape) for o in objects)
        assert a == ("yes" if present else "no")
    elif t == "position":
        color, shape = words[2], words[3]
        hits = [o for o in objects if (o.color, o.shape) == (color, shape)]
        assert len(hits) == 1
        o, mid, m = hits[0], scenes.IMAGE_SIZE / 2, scenes.MIDLINE_MARGIN
        val = o.x if a in ("left", "right") else o.y
        assert (val <= mid - m) if a in ("left", "top") else (val >= mid + m)
        assert a in words  # the answer is one of the two offered options
    else:
        pytest.fail(t)


def test_questions_are_unambiguous_and_correct():
    for i in range(80):
        s = scenes.sample(3, i, n_extra=4)
        _check(s.objects, s.question, s.answer, s.qtype)
        for q, a, t in s.extra:
            _check(s.objects, q, a, t)
        assert s.answer in scenes.ANSWERS[s.qtype]


def test_objects_do_not_overlap_and_fit():
    for i in range(40):
        objs = scenes.sample(5, i).objects
        for o in objs:
            assert o.r <= o.x <= 128 - o.r and o.r <= o.y <= 128 - o.r
        for j, o in enumerate(objs):
            for p in objs[j + 1:]:
                assert np.hypot(o.x - p.x, o.y - p.y) > o.r + p.r


def test_vocabulary_covers_every_question():
    from shapes.model import build_tokenizer

    tok = build_tokenizer()
    for i in range(60):
        s = scenes.sample(11, i, n_extra=5)
        for q, a in [(s.question, s.answer)] + [(q, a) for q, a, _ in s.extra]:
            ids = tok.encode(q + " " + a, add_special_tokens=False)
            assert tok.unk_token_id not in ids, q


def test_benchmark_cli(tmp_path):
    import json

    scenes.main(["--benchmark", "--n", "4", "--out", str(tmp_path)])
    recs = [json.loads(line) for line in (tmp_path / "questions.jsonl").read_text().splitlines()]
    assert [r["question"] for r in recs] == [s.question for s in scenes.benchmark(4)]
    assert (tmp_path / "00000.png").exists()


def test_glyphs_mark_some_large_objects_and_change_nothing_else(monkeypatch):
    samples = [scenes.sample(5, i, n_extra=3) for i in range(60)]
    objects = [o for s in samples for o in s.objects]
    marked = [o for o in objects if o.glyph]
    eligible = [o for o in objects if o.shape in scenes.GLYPH_SHAPES and o.r >= scenes.LARGE_R[0]]
    assert marked and all(o in eligible for o in marked) and 0.3 < len(marked) / len(eligible) < 0.7
    assert {o.glyph for o in marked} <= set(scenes.GLYPHS) and len({o.glyph for o in marked}) > 5
    assert samples[0].to_dict()["objects"][0].keys() >= {"shape", "color", "glyph"}
    # the same scenes drawn without glyphs: same objects and questions; pixels differ only in the ink
    monkeypatch.setattr(scenes, "assign_glyphs", lambda objects, rng: None)
    for i, s in enumerate(samples[:20]):
        plain = scenes.sample(5, i, n_extra=3)
        assert [(o.shape, o.color, o.x, o.y, o.r) for o in plain.objects] == [
            (o.shape, o.color, o.x, o.y, o.r) for o in s.objects]
        assert (plain.question, plain.answer, plain.extra) == (s.question, s.answer, s.extra)
        ys, xs = np.nonzero(np.any(_pixels(s) != _pixels(plain), axis=-1))
        inked = [o for o in s.objects if o.glyph]
        assert bool(len(xs)) == bool(inked)
        for x, y in zip(xs + 0.5, ys + 0.5):  # every changed pixel lies in a glyph box, inside its object
            assert any(abs(x - o.x) <= 3.5 and abs(y - o.y) <= 5.5 and np.hypot(x - o.x, y - o.y) < o.r
                       for o in inked)
