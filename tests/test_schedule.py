import pytest

from v2drop import PRESETS, DropSchedule, prefill_flops
from v2drop.schedule import PAPER_LAYERS, scale_layers


@pytest.mark.parametrize("text", ["3:0.5,17:0.3,22:0", "1:1", "2:0.25,4:0.4,6:0.25", "none"])
def test_parse_round_trips(text):
    assert str(DropSchedule.parse(text)) == text
    assert DropSchedule.parse(str(DropSchedule.parse(text))) == DropSchedule.parse(text)


def test_paper_llava_budgets():
    """The paper's LLaVA-1.5 budgets (192/128/64 of 576 tokens), reading "prune X %" as a share
    of the tokens still alive, land within 3 tokens of the reported numbers."""
    for name, budget in (("llava-1.5-192", 192), ("llava-1.5-128", 128), ("llava-1.5-64", 64)):
        avg = DropSchedule.preset(name).average_kept(32, 576)
        assert abs(avg - budget) <= 3, (name, avg)
    assert DropSchedule.preset("llava-1.5-192").alive_per_layer(32, 576)[:4] == [576, 576, 576, 288]
    assert DropSchedule.preset("llava-1.5-192").alive_per_layer(32, 576)[17] == 86
    assert str(DropSchedule.preset("qwen2-vl-official")) == "3:0.25,16:0.05,22:0"


def test_every_preset_parses_and_fits_its_model():
    for name in PRESETS:
        sched = DropSchedule.preset(name)
        depth = 8 if name.startswith("shapes") else (28 if "qwen" in name else 32)
        sched.validate(depth)
    with pytest.raises(ValueError, match="unknown preset"):
        DropSchedule.preset("nope")


def test_shapes_presets_hit_their_budgets():
    for name, share in (("shapes-50%", 0.5), ("shapes-33%", 1 / 3), ("shapes-15%", 0.15)):
        got = DropSchedule.preset(name).average_kept(8, 256) / 256
        assert abs(got - share) < 0.02, (name, got)


@pytest.mark.parametrize("target", [0.5, 1 / 3, 0.2])
def test_for_budget_reaches_target(target):
    sched = DropSchedule.for_budget(32, (3, 17, 22), target, num_vision_tokens=576)
    assert sched.layers == (3, 17, 22)
    assert abs(sched.average_kept(32, 576) / 576 - target) < 0.01


def test_for_budget_refuses_unreachable_target():
    with pytest.raises(ValueError, match="below"):
        DropSchedule.for_budget(8, (4, 6), 0.1)


def test_flops_ratio_tracks_tokens():
    dims = dict(num_layers=24, num_vision_tokens=729, num_text_tokens=40, hidden_size=896,
                intermediate_size=4864, kv_hidden_size=128)
    assert DropSchedule.keep_all([3]).flops_ratio(**dims) == pytest.approx(1.0)
    half = DropSchedule.parse("1:0.5").flops_ratio(**dims)
    assert 0.45 < half < 0.6
    assert DropSchedule.parse("3:0.5,12:0.3,18:0").flops_ratio(**dims) < DropSchedule.parse("3:0.5").flops_ratio(**dims)
    assert prefill_flops(2, 8, 16) > prefill_flops(1, 8, 16) > 0


@pytest.mark.parametrize("stages, message", [
    ([(3, 0.5), (3, 0.2)], "twice"),
    ([(5, 0.5), (3, 0.2)], "increasing"),
    ([(3, 2.0)], "outside"),
    ([(-1, 0.5)], "negative"),
    ([("3", 0.5)], "integer"),
    ([(3, "x")], "number"),
])
def test_invalid_stages(stages, message):
    with pytest.raises(ValueError, match=message):
        DropSchedule(stages)


def test_validate_against_depth():
    with pytest.raises(ValueError, match="layer 0"):
        DropSchedule.parse("0:0.5").validate(8)
    DropSchedule.parse("0:0.5").validate(8, allow_layer_zero=True)
    with pytest.raises(ValueError, match="outside the model"):
        DropSchedule.parse("8:0.5").validate(8)


def test_closest_to_budget_moves_the_first_layer_then_clamps():
    sched, note = DropSchedule.closest_to_budget(8, (2, 4, 6), 1 / 3, num_vision_tokens=256)
    assert note is None and sched.layers == (2, 4, 6)
    sched, note = DropSchedule.closest_to_budget(8, (2, 4, 6), 1 / 9, num_vision_tokens=256)
    assert sched.layers[0] == 1 and "clamped" in note     # 1/8 is the floor once layer 0 sees all
    assert abs(sched.average_kept(8, 256) / 256 - (1 / 8 + 0.01)) < 0.01
    sched, note = DropSchedule.closest_to_budget(8, (4, 6), 0.3, num_vision_tokens=256)
    assert sched.layers[0] < 4 and "cannot reach" in note


def test_scale_layers_rounds_halves_up_and_keeps_layers_distinct():
    assert scale_layers(PAPER_LAYERS, 32) == (3, 17, 22)
    assert scale_layers(PAPER_LAYERS, 24) == (2, 13, 17)      # 16.5 -> 17 (the app once said 16)
    assert scale_layers(PAPER_LAYERS, 28) == (3, 15, 19)
    assert scale_layers((1, 2, 3), 4, reference_layers=8) == (1, 2, 3)  # 0.5 and 1 collide: moved up
    with pytest.raises(ValueError, match="do not fit"):
        scale_layers(PAPER_LAYERS, 2)
    scaled = DropSchedule.preset("llava-1.5-192").scaled_to(24)
    assert scaled.layers == (2, 13, 17) and [r for _, r in scaled.stages] == [0.5, 0.3, 0.0]
