"""Issue 25, unit by unit: the embedded model's templates and their answers, right/wrong, the note
for what it cannot answer, the reason sentence from a trace, the measured trap labels, the
one-click sweep (on the embedded model) and its chart."""

import json
import shutil
from pathlib import Path

import pytest

from shapes import scenes, truth
from studio import lesson, reason, summary, traps
from v2drop.schedule import DropSchedule, default_schedule, first_layer_schedule
from v2drop.trace import SampleTrace

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
RECORDS = json.loads((EXAMPLES / "shapes_questions.json").read_text())
MODEL_DIR = ROOT / "assets" / "shapes-llava"


# ----------------------------------------------------------------------------- templates and answers
@pytest.mark.parametrize("question, qtype", [
    ("what color is the star ?", "color"), ("What colour is the star?", "color"),
    ("how many squares are there ?", "count"), ("is the white star on the right or the left ?", "position"),
    ("is the red circle at the top or the bottom?", "position"), ("is there a purple star ?", "exist"),
    ("is there an orange triangle ?", "exist")])
def test_templates_are_recognised(question, qtype):
    assert lesson.parse_question(question).qtype == qtype


@pytest.mark.parametrize("question", ["Which shape is orange?", "what is in the cup?", "",
                                      "is the red circle on the top or the left ?", "how many dogs are there ?"])
def test_other_questions_are_not_templates(question):
    assert lesson.parse_question(question) is None


def test_the_rule_gives_every_gallery_answer_without_the_stored_one():
    for name, record in RECORDS.items():
        objects = truth.objects_from_dicts(record["objects"])
        assert lesson.expected_answer(record["question"], objects) == record["answer"], name


def test_the_rule_gives_the_generators_answer_on_the_benchmark():
    for sample in scenes.benchmark(200):
        assert lesson.expected_answer(sample.question, sample.objects) == sample.answer, sample.question


def test_no_single_answer_gives_none_and_the_stored_answer_wins_for_its_own_question():
    stars = [scenes.Obj("star", "red", 20, 20, 10), scenes.Obj("star", "blue", 100, 100, 10)]
    assert lesson.expected_answer("what color is the star ?", stars) is None
    assert lesson.expected_answer("how many stars are there ?", stars) == "two"
    assert lesson.expected_answer("is there a green star ?", stars) == "no"
    middle = [scenes.Obj("circle", "red", 64, 64, 10)]
    assert lesson.expected_answer("is the red circle on the left or the right ?", middle) is None
    stored = {"question": "what color is the star ?", "answer": "orange"}
    assert lesson.expected_answer("What color is the star?", stars, stored) == "orange"
    assert lesson.expected_answer("Which shape is orange?", stars, stored) is None


@pytest.mark.parametrize("answer, expected, right", [("orange", "orange", True), ("Orange.", "orange", True),
                                                     ("no", "orange", False), ("", "yes", False),
                                                     ("orange star", "orange", True),
                                                     ("The star is orange.", "orange", True),
                                                     ("No, it is red, not orange.", "orange", False),
                                                     ("There are 2 squares.", "two", True),
                                                     ("three", "two", False), ("Yes, there is.", "no", False),
                                                     ("It is on the left.", "left", True)])
def test_is_right_takes_the_first_word_that_answers_the_question(answer, expected, right):
    assert lesson.is_right(answer, expected) is right


def test_the_note_says_what_the_model_can_answer_with_an_example():
    assert lesson.model_note("what color is the star ?", has_truth=True) == ""
    off = lesson.model_note("Which shape is orange?", has_truth=True)
    assert "four question templates" in off and "what color is the star ?" in off
    assert "not one of the gallery's" in lesson.model_note("what color is the star ?", has_truth=False)
    both = lesson.model_note("what is in the cup?", has_truth=False)
    assert "not a gallery scene" in both and "is there a purple star ?" in both


# ----------------------------------------------------------------------------- the reason
def _sample(kept_at_2, scores_at_2, n=8):
    return SampleTrace(num_vision_tokens=n, vision_positions=list(range(n)), alive_per_layer=[n] * 4,
                       kept={2: kept_at_2, 3: kept_at_2[:2]},
                       scores={2: {"index": list(range(n)), "score": scores_at_2},
                               3: {"index": kept_at_2, "score": [1.0] * len(kept_at_2)}})


STAR = [{"shape": "star", "color": "orange"}]


def test_the_reason_counts_the_lost_patches_and_compares_their_variation():
    sample = _sample([4, 5, 6, 7], [1, 2, 3, 10, 20, 30, 40, 50])
    text = reason.what_happened(sample, [0, 1, 2], STAR, "truth")
    assert text == ("V²Drop dropped all 3 of the star's patches before layer 2, where they changed least "
                    "(variation 2 vs 30 for the rest of the picture).")
    loss = reason.first_loss(sample, [0, 1, 2])
    assert (loss.layer, loss.lost, loss.lost_by_then, loss.total) == (2, 3, 3, 3)


def test_the_reason_for_a_partial_loss_a_later_loss_and_no_loss():
    sample = _sample([0, 5, 6, 7], [100, 2, 3, 10, 20, 30, 40, 50])   # the star: mean 35, the rest 30
    text = reason.what_happened(sample, [0, 1, 2], STAR, "truth")
    assert text == ("V²Drop dropped 2 of the star's 3 patches before layer 2 (variation 35 vs 30 for the rest of "
                    "the picture).")  # no "changed least": they did not
    later = reason.what_happened(sample, [5, 6], [], "marked")   # kept at 2, token 6 dropped at 3
    assert later.startswith("V²Drop dropped 1 of the marked 2 patches before layer 3")
    kept = reason.what_happened(sample, [0, 5], STAR, "truth")
    assert kept.startswith("V²Drop kept all 2 of the star's patches through every drop")
    assert reason.what_happened(sample, [], STAR, "truth") == ""


def test_whose_patches():
    assert reason.owner_of(STAR, "truth") == "the star's"
    assert reason.owner_of([{"shape": "square"}] * 3, "truth") == "the 3 squares'"
    assert reason.owner_of([{"shape": "square"}, {"shape": "star"}], "truth") == "the 2 objects'"
    assert reason.owner_of(STAR, "marked") == "the marked"


def test_the_summary_gives_the_reason_only_when_v2drop_differs_or_is_wrong():
    sample = _sample([4, 5, 6, 7], [1, 2, 3, 10, 20, 30, 40, 50])
    matters = {"tokens": [0, 1, 2], "objects": STAR, "source": "truth"}
    differs = summary.summarise_turn("orange", "no", "orange", "2:0.5", sample, matters, seed=7)
    assert "Expected answer: **orange**" in differs.markdown and "V²Drop: ❌ wrong" in differs.markdown
    assert differs.reason.startswith("V²Drop dropped all 3") and "seed for this run: 7" in differs.markdown
    assert differs.objects.startswith(differs.reason + " At the first drop (layer 2)")
    assert differs.full_tag == "✅ right · unpruned (no drop)"
    assert differs.drop_tag == "❌ wrong (expected orange) · V²Drop at `2:0.5`"
    same = summary.summarise_turn("orange", "orange", "orange", "2:0.5", sample, matters)
    assert same.reason == "" and "Why" not in same.markdown
    assert ("At the first drop (layer 2), the star's patches changed 2 vs 30 for the rest of the picture"
            in same.markdown), "the object-vs-background variation, with every answer whose objects are known"
    unknown = summary.summarise_turn("a cat", "a dog", None, "2:0.5", sample, None, note="not a gallery scene")
    assert "Expected" not in unknown.markdown and "mark them" in unknown.reason
    assert "⚠️ not a gallery" in unknown.markdown


# ----------------------------------------------------------------------------- trap labels
@pytest.fixture(scope="module")
def measured():
    sweep = traps.load_sweep(MODEL_DIR)
    assert sweep is not None, "the shipped sweep was measured on the shipped weights"
    return sweep


def test_a_preset_starting_at_layer_2_carries_the_measured_number(measured):
    rows = {(r["method"], r["budget"], r["first_layer"]): r for r in measured["rows"]}
    trap = traps.trap_at(measured, DropSchedule.parse("2:0.6,4:0.5,6:0.3"), 8)
    assert trap is not None and trap.first_layer == 2 and trap.budget == 0.5
    assert trap.relative == rows[("v2drop", 0.5, 2)]["relative"]
    assert trap.random_relative == rows[("random", 0.5, 2)]["relative"]
    v2, rnd = round(100 * trap.relative), round(100 * trap.random_relative)
    assert trap.label() == (f"⚠️ first drop at layer 2: {v2} % of unpruned accuracy on this model "
                            f"(random dropping: {rnd} %)") and v2 == 47
    assert traps.trap_at(measured, DropSchedule.parse("2:0.25,4:0.4,6:0.25"), 8).budget == 0.3333


def test_no_label_where_the_sweep_shows_no_trap_or_does_not_apply(measured):
    assert traps.trap_at(measured, default_schedule(8, 256), 8) is None          # layer 1: level with random
    assert traps.trap_at(measured, DropSchedule.parse("3:0.5"), 8) is None        # layer 3
    assert traps.trap_at(measured, DropSchedule.parse("1:0.1,3:0.2,5:0"), 8) is None   # 15 %: no measured budget
    assert traps.trap_at(measured, DropSchedule.parse("2:0.6,4:0.5,6:0.3"), 24) is None  # another depth
    assert traps.preset_warning(measured, "3:0.5,17:0.3,22:0", 8) == ""          # does not fit: no label
    assert traps.preset_warning(measured, "not a schedule", 8) == ""


def test_a_sweep_of_other_weights_is_not_used(tmp_path):
    shutil.copy(MODEL_DIR / "sweep.json", tmp_path / "sweep.json")
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert traps.load_sweep(tmp_path) is None
    assert traps.load_sweep(tmp_path / "missing") is None


# ----------------------------------------------------------------------------- the one-click sweep
@pytest.fixture(scope="module")
def embedded():
    from shapes.model import load_default
    from studio.inputs import load_image

    model, processor = load_default("cpu", model_dir=str(MODEL_DIR))
    image, _ = load_image(EXAMPLES / "shapes_0_color.png")
    record = RECORDS["shapes_0_color.png"]
    return model, processor, image, record


def test_the_sweep_runs_every_reachable_first_layer_like_a_single_run(embedded):
    from studio.layer_sweep import run_layer_sweep
    from studio.pair import stream_pair

    model, processor, image, record = embedded
    reference = DropSchedule.parse("2:0.6,4:0.5,6:0.3")
    tokens = record["question_patches"]
    calls = []
    inner = model.model
    real = inner.get_image_features
    inner.get_image_features = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    try:
        sweep = run_layer_sweep(model, processor, image, record["question"], [], reference, 256, tokens=tokens,
                                expected="orange", seed=5)
    finally:
        del inner.get_image_features
    assert len(calls) == 1, "the vision tower runs once for all the runs"
    assert sweep.unreachable == [4, 5, 6, 7] and sorted({r.first_layer for r in sweep.rows}) == [1, 2, 3]
    budget = reference.average_kept(8, 256) / 256
    for row in sweep.rows:
        schedule = first_layer_schedule(row.first_layer, 8, budget, 256)
        assert row.schedule == str(schedule)
    v2 = sweep.row(2, "v2drop")
    *_, last = stream_pair(model, processor, image, record["question"], [], [], v2.schedule, max_new_tokens=4)
    assert v2.answer == last.drop_text and sweep.unpruned == last.full_text
    alive = set(last.trace.samples[0].alive_after(2))
    assert v2.alive_share == sum(t in alive for t in tokens) / len(tokens)
    assert v2.right is (v2.answer == "orange")


def test_the_sweeps_random_draw_follows_its_seed(embedded):
    from studio.layer_sweep import run_layer_sweep

    model, processor, image, record = embedded
    reference = DropSchedule.parse("2:0.6,4:0.5,6:0.3")
    args = (model, processor, image, record["question"], [], reference, 256)
    shares = {}
    for seed in (1, 1, 2, 3, 4):
        sweep = run_layer_sweep(*args, tokens=record["question_patches"], seed=seed,
                                methods=("random",))
        shares.setdefault(seed, []).append(tuple(r.alive_share for r in sweep.rows))
    assert shares[1][0] == shares[1][1]
    assert len({shares[s][0] for s in (1, 2, 3, 4)}) > 1, "other seeds, other masks"


def test_the_sweep_chart_and_table(embedded):
    from studio.layer_sweep import LayerSweep, SweepRow, sweep_markdown, tie_sentence
    from visualize.layer_sweep import layer_sweep_chart

    sweep = LayerSweep("what color is the star ?", 0.5, "2:0.6", 8, 256, 9, "orange", "orange", 9, rows=[
        SweepRow(1, "v2drop", "1:0.6", "orange", True, 1.0), SweepRow(1, "random", "1:0.6", "orange", True, 0.5),
        SweepRow(2, "v2drop", "2:0.5", "no", False, 0.0), SweepRow(2, "random", "2:0.5", "orange", True, 0.25)],
        unreachable=[3])
    fig = layer_sweep_chart(sweep.to_dict())
    v2 = [t for t in fig.data if t.name == "V²Drop"][0]
    assert list(v2.y) == [1.0, 0.0] and list(v2.marker.symbol) == ["circle", "x"]
    assert len({tuple(t.x) for t in fig.data}) == 2, "methods side by side, never one line on another"
    table = sweep_markdown(sweep, "the star's")
    assert "| 2 | no ❌ 0 % | orange ✅ 25 % |" in table and "seed 9" in table
    assert "1: `1:0.6`, 2: `2:0.5`" in table and "layer 3: the budget cannot be reached" in table
    assert tie_sentence(sweep, "the star") == (
        "Your question (“what color is the star ?”) with V²Drop, first drop at layer 1: the star kept, “orange” ✅; "
        "at layer 2: the star lost, “no” ❌.")
    empty = LayerSweep("q", 0.5, "2:0.6", 8, 256, 0, "a", None, 0)
    assert layer_sweep_chart(empty.to_dict()) is None


def test_the_sweep_benchmark_writes_every_gallery_example(tmp_path, capsys):
    from benchmarks import layer_sweep as bench

    result = bench.main(["--repeats", "1", "--schedule", "2:0.6,4:0.5,6:0.3", "--json", str(tmp_path / "s.json")])
    assert json.loads((tmp_path / "s.json").read_text()) == result
    assert {r["example"] for r in result["rows"]} == set(RECORDS)
    first = next(r for r in result["rows"] if r["example"] == "shapes_0_color.png")
    assert first["runs"] == 9 and first["v2drop"] == {"1": "orange", "2": "no (wrong)", "3": "orange"}
    assert "| shapes_0_color.png | 9 |" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl"])
def test_the_sweep_answers_like_the_chat_on_every_family(tiny, family):
    """Each (first layer, method) of the sweep answers as the side-by-side chat does with that
    schedule, on every supported family (the tower's output reused, M-RoPE, multi-crop layouts)."""
    import tiny_models as tm
    from studio.layer_sweep import run_layer_sweep
    from studio.pair import stream_pair

    model, processor = tiny(family)
    image = tm.image(3, (64, 48))
    *_, ref = stream_pair(model, processor, image, "what is it", [], [], "1:0.5", max_new_tokens=2)
    n = ref.trace.samples[0].num_vision_tokens
    depth = ref.trace.num_layers
    sweep = run_layer_sweep(model, processor, image, "what is it", [], DropSchedule.parse("1:0.5"), n,
                            tokens=list(range(0, n, 3)), seed=3, methods=("v2drop", "random"), max_new_tokens=2)
    assert sweep.rows and sweep.unpruned == ref.full_text
    for row in sweep.rows:
        assert 0.0 <= row.alive_share <= 1.0 and row.right is None
    for row in [r for r in sweep.rows if r.method == "v2drop"][:2]:
        *_, last = stream_pair(model, processor, image, "what is it", [], [], row.schedule, max_new_tokens=2)
        assert row.answer == last.drop_text, (family, row)
    assert all(r.first_layer < depth for r in sweep.rows)
