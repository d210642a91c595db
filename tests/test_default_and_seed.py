"""Issue 25, library side: the default schedule follows one documented rule (the paper's layers
scaled to the depth, half of the tokens on layer average), the sweep's first-layer rule lives in
the library, and the random baseline is random: a fresh seed draws a fresh mask, the same seed the
same mask, and the trace says which seed it was."""

import pytest
import torch

import tiny_models as tm
import v2drop
from v2drop.engine import layer_seed
from v2drop.schedule import (DEFAULT_BUDGET, DEFAULT_RULE, PAPER_LAYERS, DropSchedule, default_schedule, drop_layers,
                             first_layer_schedule, scale_layers)


@pytest.mark.parametrize("depth", [2, 3, 4, 8, 24, 28, 32, 80])
def test_default_schedule_is_the_paper_layers_scaled_at_half_the_tokens(depth):
    n = 256
    schedule = default_schedule(depth, n)
    schedule.validate(depth)
    share = schedule.average_kept(depth, n) / n
    assert abs(share - DEFAULT_BUDGET) < 0.02, (depth, str(schedule), share)
    if depth >= 4:
        assert schedule.layers == scale_layers(PAPER_LAYERS, depth)
    assert len({ratio for _, ratio in schedule.stages}) == 1, "one shared keep ratio"


def test_default_schedule_examples_and_rule_text():
    assert default_schedule(8, 256).layers == (1, 4, 6)
    assert default_schedule(24).layers == (2, 13, 17)
    assert default_schedule(32).layers == PAPER_LAYERS
    assert "3, 17 and 22" in DEFAULT_RULE and "half" in DEFAULT_RULE
    with pytest.raises(ValueError, match="no layer to drop"):
        default_schedule(1)


def test_first_layer_schedule_is_the_sweep_rule_and_refuses_an_unreachable_budget():
    from benchmarks import sweep

    for first in (1, 2, 3, 4):
        schedule = first_layer_schedule(first, 8, 0.5, 256)
        assert schedule.layers == drop_layers(first, 8)
        assert schedule == sweep.sweep_schedule("v2drop", first, 8, 0.5, 256).schedule
    with pytest.raises(ValueError):
        first_layer_schedule(5, 8, 0.5, 256)   # dropping everything at 5 of 8 keeps 5/8 > 1/2


def test_layer_seeds_never_collide_across_runs():
    seeds = {layer_seed(seed, layer) for seed in range(200) for layer in range(64)}
    assert len(seeds) == 200 * 64
    assert layer_seed(1, 2) != layer_seed(0, 3)   # what `seed + layer` got wrong


@pytest.fixture(scope="module")
def llava(tiny):
    model, processor = tiny("llava", "sdpa")
    inputs = tm.inputs(processor, [tm.image(1, (64, 64))], ["what"])
    return model, inputs


def _kept(model, inputs, method, seed):
    with v2drop.apply(model, "2:0.5", method, seed=seed) as session, torch.inference_mode():
        model(**inputs, use_cache=False)
    return session.trace.samples[0].kept[2], session.trace.seed


def test_random_draws_a_fresh_mask_per_seed_and_records_it(llava):
    model, inputs = llava
    first, seed = _kept(model, inputs, "random", 11)
    again, _ = _kept(model, inputs, "random", 11)
    other, other_seed = _kept(model, inputs, "random", 12)
    assert first == again and seed == 11 and other_seed == 12
    assert first != other
    masks = {tuple(_kept(model, inputs, "random", s)[0]) for s in range(20)}
    assert len(masks) > 15, "twenty seeds, (almost) twenty different masks"


def test_deterministic_rules_record_no_seed(llava):
    model, inputs = llava
    assert _kept(model, inputs, "v2drop", 5)[1] is None and _kept(model, inputs, "uniform", 5)[1] is None


def test_shapes_evaluate_gives_every_batch_its_own_random_draw(monkeypatch):
    """``shapes.evaluate.evaluate`` seeds each batch with its first question's index and says how
    many draws its random accuracy averages."""
    from shapes import evaluate as shapes_eval

    import contextlib
    from types import SimpleNamespace

    seeds = []

    def spy(model, schedule, method="v2drop", **kwargs):
        seeds.append(kwargs.get("seed"))
        return contextlib.nullcontext(SimpleNamespace(trace=None))

    monkeypatch.setattr(v2drop, "apply", spy)
    monkeypatch.setattr(shapes_eval, "answer", lambda model, processor, imgs, qs, k: ["red"] * len(qs))
    questions = [{"image": None, "question": "what color is the star ?", "answer": "red", "qtype": "color"}] * 5
    model = torch.nn.Linear(1, 1)
    result = shapes_eval.evaluate(model, None, questions, method="random", schedule=DropSchedule.parse("2:0.5"),
                                  batch_size=2)
    assert seeds == [0, 2, 4] and result["random_draws"] == 5
