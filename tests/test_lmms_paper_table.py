"""The recipe for the paper's LLaVA-1.5-7B table: budgets, commands, the paper's numbers, the collected table."""

import json

import pytest

from benchmarks.bench import matched_schedule
from benchmarks.lmms.paper_table import BENCHMARKS, ROWS, command, relative_average, table
from v2drop import DropSchedule
from v2drop.lmms.requests import parse_schedule

ROW = {row.name: row for row in ROWS}
DEPTH, VISION = 32, 576   # LLaVA-1.5-7B


@pytest.mark.parametrize("name", ["fastv-192", "pdrop-192", "fastv-128", "pdrop-128"])
def test_baselines_run_at_v2drops_budget_by_the_benchmarks_rule(name):
    row = ROW[name]
    reference = DropSchedule.preset(f"llava-1.5-{row.tokens}")
    expected, _ = matched_schedule(row.method, reference, DEPTH, VISION)
    assert DropSchedule.parse(row.schedule) == expected
    assert abs(expected.average_kept(DEPTH, VISION) - reference.average_kept(DEPTH, VISION)) < 1.0


def test_the_paper_averages_follow_from_the_paper_scores():
    base = ROW["vanilla"].paper
    for row in ROWS:
        if row.paper:
            assert relative_average(row.paper, base) == pytest.approx(row.paper_average, abs=0.051), row.name


def test_each_command_names_the_model_tasks_and_an_unsplittable_schedule(tmp_path):
    for row in ROWS:
        cmd = command(row, gpus=8, out=tmp_path)
        assert cmd[:4] == ["accelerate", "launch", "--num_processes", "8"]
        assert cmd[cmd.index("--model") + 1] == "v2drop"
        assert cmd[cmd.index("--tasks") + 1].split(",") == [b.task for b in BENCHMARKS]
        args = dict(part.split("=", 1) for part in cmd[cmd.index("--model_args") + 1].split(","))
        assert args["pretrained"] == "llava-hf/llava-1.5-7b-hf" and args["method"] == row.method
        assert parse_schedule(args["schedule"]) == (DropSchedule.parse(row.schedule) if ":" in row.schedule
                                                   else parse_schedule(row.schedule))


def test_collect_sets_measured_scores_beside_the_papers(tmp_path):
    def write(row_name, scale):
        folder = tmp_path / row_name / "llava-hf__llava-1.5-7b-hf"
        folder.mkdir(parents=True)
        results = {"gqa": {"exact_match,none": 0.62 * scale}, "scienceqa_img": {"exact_match,none": 0.70 * scale},
                   "textvqa_val_ocr": {"exact_match,none": 0.58 * scale}, "pope": {"pope_f1_score,none": 0.86 * scale},
                   "mme": {"mme_perception_score,none": 1500.0 * scale, "mme_cognition_score,none": 350.0 * scale},
                   "mmbench_en_dev_static": {"gpt_eval_score,none": 64.0 * scale}}
        throughput = {"avg_vision_tokens_kept": 576.0 * scale, "avg_prefill_ms_per_sample": 50.0, "avg_peak_memory_mb": 14000.0}
        (folder / "20260101_000000_results.json").write_text(json.dumps({"results": results, "throughput": throughput}))

    write("vanilla", 1.0)
    write("v2drop-192", 0.9)
    lines = {line.split(" | ")[0].strip("| "): line for line in table(tmp_path).splitlines()}
    assert "| 62.0 (61.9) | 70.0 (69.5) | 58.0 (58.2) | 86.0 (85.9) | 1850 (1862) | 64.0 (64.6) | 100.0% (100.0%) |" \
        in lines["vanilla"]
    assert "| 55.8 (58.5) |" in lines["v2drop-192"] and "| 90.0% (97.6%) | 518.4 |" in lines["v2drop-192"]
    assert lines["fastv-192"].count("| -") >= 7   # not run: only the paper's numbers
