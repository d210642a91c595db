"""The benchmark command runs end to end on toy models (numbers are not asserted)."""

import json

import pytest

from benchmarks import bench
from v2drop import DropSchedule


def test_matched_schedules_share_the_budget():
    layers, n = 24, 729
    reference = bench.paper_schedules(layers)["paper-192"]
    target = reference.average_kept(layers, n)
    for method in ("fastv", "fastv-lite", "pdrop", "random", "uniform", "downsample"):
        schedule, note = bench.matched_schedule(method, reference, layers, n)
        assert abs(schedule.average_kept(layers, n) - target) <= 0.02 * n, (method, str(schedule))
    assert bench.matched_schedule("fastv", reference, layers, n)[0].layers == (bench.fastv_layer(layers),)
    assert bench.matched_schedule("pdrop", reference, layers, n)[0].layers == (6, 12, 18)
    assert bench.matched_schedule("downsample", reference, layers, n)[0].layers == (0,)


def test_paper_schedules_are_valid_for_each_model():
    for layers in (8, 24, 28, 32):
        for schedule in bench.paper_schedules(layers).values():
            schedule.validate(layers)
    assert str(bench.paper_schedules(32)["paper-192"]) == str(DropSchedule.preset("llava-1.5-192"))


def test_bench_runs_end_to_end(tmp_path):
    out = tmp_path / "bench"
    result = bench.main(["--model", "tiny", "--methods", "none,v2drop,fastv,fastv-lite,pdrop,random,uniform,downsample",
                         "--schedules", "paper-128", "--repeats", "1", "--warmup", "0", "--max-new-tokens", "2", "--clock", "cpu",
                         "--out", str(out)])
    rows = result["speed"]
    assert [r["method"] for r in rows] == ["none", "v2drop", "fastv", "fastv-lite", "pdrop", "random", "uniform",
                                           "downsample"]
    for r in rows:
        assert r["prefill_s"] > 0 and r["prefill_wall_s"] > 0 and r["kv_cache_bytes"] > 0
        assert r["predicted_speedup"] >= 1.0
    none = rows[0]
    assert all(r["kv_cache_bytes"] < none["kv_cache_bytes"] for r in rows[1:])
    fastv, lite = rows[2], rows[3]
    assert fastv["attention_matrix_bytes"] > lite["attention_matrix_bytes"] > 0
    data = json.loads((out / "speed-tiny.json").read_text())
    assert data["info"]["num_vision_tokens"] == 64
    assert (out / "speed-tiny.html").exists() and (out / "report-tiny.md").read_text().startswith("## tiny")


def test_bench_accuracy_and_bias_end_to_end(tmp_path):
    pytest.importorskip("plotly")
    out = tmp_path / "bench"
    result = bench.main(["--model", "shapes", "--shapes-random", "--no-speed", "--accuracy", "--n", "8",
                         "--batch-size", "8", "--methods", "none,v2drop,fastv,uniform,downsample",
                         "--schedules", "shapes-33%", "--bins", "8", "--out", str(out)])
    rows = result["accuracy"]
    assert [r["method"] for r in rows] == ["none", "v2drop", "fastv", "uniform", "downsample"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n"] == 8 for r in rows)
    bias = result["bias"]["shapes-33%"]
    assert set(bias) == {"v2drop", "fastv", "uniform", "downsample"}
    for method, res in bias.items():
        assert len(res["retention_first_drop"]) == 8 and all(0.0 <= v <= 1.0 for v in res["retention_first_drop"])
    assert bias["downsample"]["first_drop_layer"] == 0 and bias["v2drop"]["first_drop_layer"] == 2
    # layer-averaged retention over the bins equals the schedule's budget (equal-size bins)
    share = rows[1]["budget_share"]
    assert abs(sum(bias["v2drop"]["retention_layer_averaged"]) / 8 - share) < 1e-6
    assert (out / "bias-shapes.html").exists() and (out / "accuracy-shapes.json").exists()


def test_throughput_table_end_to_end(tmp_path):
    """``--throughput`` on the tiny Qwen2-VL layout: every (set, batch, method) row, equal vision tokens
    in both sets, padding only where the batch is ragged, and the targets computed (not asserted)."""
    from benchmarks import throughput

    sets = throughput.image_sets(8)
    assert sum(h * w for h, w in sets["mixed"]) == sum(h * w for h, w in sets["same"]) == 8 * 64
    assert len({h for h, _ in sets["mixed"]}) == 8
    result = bench.main(["--model", "tiny-qwen2-vl", "--throughput", "--grid", "4", "--repeats", "1", "--warmup", "0",
                         "--max-new-tokens", "2", "--out", str(tmp_path)])
    rows = result["rows"]
    assert len(rows) == 12 and all(r["images_per_s"] > 0 and r["images"] == 8 for r in rows)
    padding = {(r["set"], r["batch_size"], r["method"]): r["padding_share"] for r in rows}
    assert padding[("same", 8, "none")] == padding[("same", 8, "v2drop")] == padding[("mixed", 1, "v2drop")] == 0
    # V²Drop's first drop removes the prompts' padding; fillers after it cost less than the padding did
    assert padding[("mixed", 8, "none")] > padding[("mixed", 8, "v2drop")] > 0
    assert set(result["targets"]) >= {"mixed_over_same_b8", "speedup_ratio_same", "speedup_ratio_mixed"}
    data = json.loads((tmp_path / "throughput-tiny-qwen2-vl.json").read_text())
    assert data["info"]["sets"]["mixed"] == [list(g) for g in throughput.image_sets(4)["mixed"]]
