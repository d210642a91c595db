"""Every embedded model answers with exactly one word and its end token: on every held-out
benchmark question, on the held-out drawn set (square, landscape and portrait pictures on five
kinds of canvas), and on the picture that once got "red red" (a red circle and a blue square
on a white 320x240 canvas)."""

import numpy as np
import pytest

from shapes import drawn, report, scenes
from shapes.model import EMBEDDED_MODEL_DIRS, load_default


def _red_circle_blue_square() -> list[scenes.Sample]:
    objects = [scenes.Obj("circle", "red", 40.0, 64.0, 15.0), scenes.Obj("square", "blue", 92.0, 64.0, 15.0)]
    style = drawn.Style("white", (320, 240), antialias=False)
    image = style.render(objects, np.random.default_rng(0))
    questions = [("what color is the circle ?", "red"), ("what color is the square ?", "blue"),
                 ("how many circles are there ?", "one"), ("is there a red circle ?", "yes"),
                 ("is the blue square on the left or the right ?", "right")]
    return [scenes.Sample(image, q, a, "", objects) for q, a in questions]


@pytest.mark.parametrize("model_dir", EMBEDDED_MODEL_DIRS)
def test_every_answer_is_one_word_then_the_end_token(model_dir):
    model, processor = load_default(model_dir=model_dir)
    samples = scenes.benchmark(1200) + drawn.benchmark(600) + _red_circle_blue_square()
    eos = model.generation_config.eos_token_id
    words = report.answer_words(processor.tokenizer)
    answers = report.answer_tokens(model, processor, samples, batch_size=64)
    bad = [(s.question, s.image.size, processor.tokenizer.decode(a)) for s, a in zip(samples, answers)
           if not report.is_one_word(a, eos, words)]
    assert not bad, f"{len(bad)} answers are not one word + end, e.g. {bad[:5]}"
