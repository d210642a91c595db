"""The drop-layer sweep: its schedule rule, the object-patch recall, the command end to end, the figure."""

import json

import numpy as np
import pytest

from benchmarks import sweep
from v2drop.trace import PatchLayout, SampleTrace, Trace


# ----------------------------------------------------------------------------- the schedule rule
def test_drop_layers_split_the_remaining_depth_in_three():
    assert [sweep.drop_layers(first, 8) for first in range(1, 8)] == [
        (1, 3, 5), (2, 4, 6), (3, 4, 6), (4, 5, 6), (5, 6, 7), (6, 7), (7,)]
    assert sweep.drop_layers(3, 32) == (3, 12, 22)
    for bad in (0, 8):
        with pytest.raises(ValueError):
            sweep.drop_layers(bad, 8)


@pytest.mark.parametrize("num_layers", [8, 24, 32])
@pytest.mark.parametrize("budget", [0.5, 0.3333])
def test_every_method_meets_the_budget_where_it_is_reachable(num_layers, budget):
    n = 256
    for first in range(1, num_layers):
        plans = {m: sweep.sweep_schedule(m, first, num_layers, budget, n) for m in sweep.DEFAULT_METHODS}
        reachable = first / num_layers <= budget
        assert all(p.reachable == reachable for p in plans.values()), (first, plans)
        if not reachable:
            assert all(p.schedule is None and p.avg_kept_share is None and "below" in p.note for p in plans.values())
            continue
        for method, plan in plans.items():
            assert abs(plan.avg_kept_share - budget) <= 0.005, (method, first, str(plan.schedule))
            assert plan.avg_kept_share == plan.schedule.average_kept(num_layers, n) / n
        assert plans["fastv-lite"].schedule.layers == (first,)
        assert plans["v2drop"].schedule.layers == sweep.drop_layers(first, num_layers)
        assert len({ratio for _, ratio in plans["v2drop"].schedule.stages}) == 1  # one shared keep share
        assert {str(plans[m].schedule) for m in ("v2drop", "pdrop", "random", "uniform")} == {str(plans["v2drop"].schedule)}


def test_default_first_layers_reach_the_largest_budget():
    assert sweep.default_first_layers(8, [0.5, 0.3333]) == [1, 2, 3, 4]
    assert sweep.default_first_layers(8, [0.3333]) == [1, 2]
    assert sweep.default_first_layers(32, [0.25]) == list(range(1, 9))


# ----------------------------------------------------------------------------- recall
def _sample(cells=None) -> SampleTrace:
    """16 vision tokens on a 4x4 grid; layer 2 keeps ordinals 0, 1, 5; layer 4 keeps 5."""
    cells = cells or [(0, i // 4, i % 4) for i in range(16)]
    return SampleTrace(num_vision_tokens=16, vision_positions=list(range(3, 19)), kept={2: [0, 1, 5], 4: [5]},
                       layout=PatchLayout(cells, [(4, 4)], ["image"]))


def _mask(patches) -> np.ndarray:
    mask = np.zeros(16, dtype=bool)
    mask[list(patches)] = True
    return mask


def test_recall_counts_the_object_patches_alive_after_a_layer():
    sample, mask = _sample(), _mask([1, 5, 6, 15])
    assert sweep.recall_after(sample, 1, mask) == 1.0    # nothing dropped yet
    assert sweep.recall_after(sample, 2, mask) == 0.5    # 1 and 5 survive the drop at 2
    assert sweep.recall_after(sample, 3, mask) == 0.5
    assert sweep.recall_after(sample, 4, mask) == 0.25   # only 5
    assert sweep.recall_after(sample, 2, _mask([])) is None


def test_recall_maps_ordinals_to_patches_through_the_layout():
    column_major = [(0, i % 4, i // 4) for i in range(16)]  # ordinal i sits at row i % 4, column i // 4
    sample = _sample(column_major)
    # kept ordinals 0, 1, 5 are the patches 0, 4 and 5 (row-major)
    assert sweep.patch_indices(sample, [0, 1, 5]) == [0, 4, 5]
    assert sweep.recall_after(sample, 2, _mask([4, 5])) == 1.0
    assert sweep.recall_after(sample, 2, _mask([1, 2])) == 0.0


def test_recall_collector_follows_the_question_order_and_skips_empty_masks():
    masks = [_mask([1, 6]), _mask([]), _mask([5]), _mask([15])]
    collector = sweep.RecallCollector(masks, ["color", "exist", "color", "count"], layer=2)
    for pair in ([_sample(), _sample()], [_sample(), _sample()]):
        collector(Trace(method="v2drop", schedule="2:0.2", num_layers=8, samples=pair))
    mean, per_type, counted = collector.result()
    assert collector.values == [0.5, None, 1.0, 0.0]
    assert mean == pytest.approx(0.5)
    assert per_type == {"color": 0.75, "count": 0.0} and counted == {"color": 2, "count": 1}
    collector.values.pop()
    with pytest.raises(RuntimeError):
        collector.result()


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    """An untrained Shapes-format model saved the way trained ones are."""
    from shapes.model import build_model, build_processor

    folder = tmp_path_factory.mktemp("shapes-random")
    build_model(seed=0).save_pretrained(folder)
    build_processor(str(folder))
    return folder


def test_sweep_command_writes_json_and_figure(tiny_shapes, tmp_path):
    out, figure = tmp_path / "sweep.json", tmp_path / "sweep.html"
    result = sweep.main(["--model", str(tiny_shapes), "--n", "8", "--budgets", "0.5", "--first-layers", "2,5",
                         "--batch-size", "8", "--out", str(out), "--figure", str(figure)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    for key in ("model", "n", "seed", "unpruned", "rows", "command", "rule", "num_layers", "max_new_tokens"):
        assert key in data, key
    assert data["n"] == 8 and data["command"].startswith("python -m benchmarks.sweep --model")
    rows = data["rows"]
    assert [(r["first_layer"], r["method"]) for r in rows] == [(f, m) for f in (2, 5) for m in sweep.DEFAULT_METHODS]
    base = data["unpruned"]["accuracy"]
    for r in rows:
        assert r["reachable"] == (r["first_layer"] == 2)
        if not r["reachable"]:
            assert r["schedule"] is None and r["accuracy"] is None and r["recall_at_first_drop"] is None
            continue
        assert 0.0 <= r["accuracy"] <= 1.0 and set(r["per_type"]) <= {"color", "count", "position", "exist"}
        assert r["relative"] == (r["accuracy"] / base if base else None)
        assert 0.0 <= r["recall_at_first_drop"] <= 1.0 and r["seconds"] > 0
        assert abs(r["avg_kept_share"] - 0.5) <= 0.005
    by_method = {r["method"]: r for r in rows if r["reachable"]}
    assert by_method["fastv-lite"]["schedule"].count(":") == 1
    # uniform keeps every n/k-th patch: about its keep share (0.55) of each object's patches
    keep = float(by_method["uniform"]["schedule"].split(",")[0].split(":")[1])
    assert abs(by_method["uniform"]["recall_at_first_drop"] - keep) < 0.2
    html = figure.read_text()
    assert "Drop-layer sweep" in html and "first drop layer" in html
    assert "| 0.5 | 5 | v2drop | unreachable |" in sweep.sweep_table(data)
    pivot = sweep.pivot_table(data).splitlines()
    assert pivot[0] == "| budget | first drop layer | " + " | ".join(sweep.DEFAULT_METHODS) + " |"
    assert pivot[3] == "| 0.5 | 5 | " + " | ".join(["unreachable"] * 5) + " |"
    assert pivot[2].startswith("| 0.5 | 2 | ") and pivot[2].count(" / ") == 5


# ----------------------------------------------------------------------------- the figure
def test_sweep_chart_draws_one_line_per_method_and_budget_with_gaps():
    from visualize.charts import sweep_chart

    def row(budget, first, method, rel):
        reachable = rel is not None
        return dict(budget=budget, first_layer=first, method=method, reachable=reachable,
                    schedule=f"{first}:0.5" if reachable else None, avg_kept_share=budget if reachable else None,
                    accuracy=rel, relative=rel, recall_at_first_drop=rel and rel / 2)

    data = {"model": "toy", "n": 4, "unpruned": {"accuracy": 0.9},
            "rows": [row(b, f, m, None if b < 0.4 and f == 3 else 0.1 * f)
                     for b in (0.5, 0.33) for m in ("v2drop", "random") for f in (1, 2, 3)]}
    fig = sweep_chart(data)
    assert len(fig.data) == 2 * 2 * 2  # budgets x methods x (relative, recall)
    assert {t.name for t in fig.data} == {"v2drop", "random"}
    assert sum(t.showlegend is not False for t in fig.data) == 2
    v2_rel_33 = [t for t in fig.data if t.name == "v2drop" and t.xaxis == "x2"][0]
    assert list(v2_rel_33.x) == [1, 2, 3] and v2_rel_33.y[2] is None and v2_rel_33.y[1] == pytest.approx(20.0)
    assert "1:0.5" in v2_rel_33.text[0] and "unreachable" in v2_rel_33.text[2]
    assert "toy" in fig.layout.title.text and "90.0" in fig.layout.title.text
    shaded = [(s.x0, s.x1, s.xref) for s in fig.layout.shapes if s.type == "rect"]
    assert shaded == [(2.5, 3.5, "x2"), (2.5, 3.5, "x4")]  # the 33 % column, both rows
