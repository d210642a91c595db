"""The parts of the lmms-eval model that need no lmms-eval: requests, prompts, run statistics.

These run in the main venv; the harness itself is tested in tests/test_lmms_eval.py.
"""

from types import SimpleNamespace

import pytest
import torch

import v2drop
from shapes import scenes
from shapes.evaluate import build_inputs
from shapes.model import build_model, build_processor
from v2drop import DropSchedule
from v2drop.lmms.inputs import image_batch, strip_placeholders
from v2drop.lmms.requests import batches, generation_kwargs, parse_schedule, truncate
from v2drop.lmms.stats import EvalStats


def _request(task="t", gen=None, padding=False, doc_id=0):
    """What a generate_until Instance shows a simple model: args and metadata."""
    metadata = {"__padding_only__": True} if padding else {}
    return SimpleNamespace(args=("q", gen or {"max_new_tokens": 3}, None, doc_id, task, "test"), metadata=metadata)


@pytest.mark.parametrize("text", ["3:0.5;17:0.3;22:0", '"3:0.5,17:0.3,22:0"', "'3:0.5,17:0.3,22:0'",
                                  "[3:0.5,17:0.3,22:0]", " 3:0.5 ; 17:0.3 ; 22:0 "])
def test_schedule_args_survive_lmms_evals_comma_split(text):
    assert parse_schedule(text) == DropSchedule.parse("3:0.5,17:0.3,22:0")


def test_schedule_args_take_presets_and_none_and_reject_nonsense():
    assert parse_schedule("llava-1.5-128") == DropSchedule.preset("llava-1.5-128")
    assert parse_schedule("none").stages == ()
    with pytest.raises(ValueError):
        parse_schedule("3:1.5")
    with pytest.raises(ValueError):
        parse_schedule("llava-1.5-999")


def test_batches_keep_order_and_split_on_size_task_and_settings():
    reqs = [_request(doc_id=i) for i in range(7)]
    reqs += [_request(task="other", doc_id=7), _request(task="other", gen={"max_new_tokens": 9}, doc_id=8)]
    got = batches(reqs, 3)
    assert [b.indices for b in got] == [[0, 1, 2], [3, 4, 5], [6], [7], [8]]
    assert all(r is reqs[i] for b in got for i, r in zip(b.indices, b.requests))


def test_batch_marks_padding_requests_and_splits_into_singles():
    batch = batches([_request(), _request(padding=True)], 4)[0]
    assert batch.real == [True, False]
    assert [b.indices for b in batch.singles()] == [[0], [1]]


def test_generation_kwargs_greedy_unless_temperature():
    kwargs, until = generation_kwargs({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "until": "\n\n",
                                       "image_aspect_ratio": "original"}, pad_token_id=5)
    assert kwargs == {"max_new_tokens": 16, "num_beams": 1, "do_sample": False, "pad_token_id": 5}
    assert until == ["\n\n"]
    kwargs, until = generation_kwargs({"temperature": 0.7, "top_p": 0.9, "until": ["", "END"]}, pad_token_id=None)
    assert kwargs["do_sample"] and kwargs["temperature"] == 0.7 and kwargs["top_p"] == 0.9
    assert kwargs["max_new_tokens"] == 128 and until == ["END"]


def test_truncate_cuts_at_the_earliest_stop_string():
    assert truncate("yes.\nNo\n\nmore", ["\n\n", "\n"]) == "yes."
    assert truncate("yes", ["\n"]) == "yes"
    assert truncate("yes", []) == "yes"


def test_image_batch_is_the_shapes_evaluate_prompt_bit_for_bit():
    proc = build_processor()
    proc.tokenizer.padding_side = "right"
    samples = scenes.benchmark(3)
    ours = image_batch(proc, [f"<image>\n{s.question}" for s in samples], [[s.image] for s in samples])
    theirs = build_inputs(proc, [s.image for s in samples], [s.question for s in samples])
    assert set(ours.keys()) == set(theirs.keys())
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    assert proc.tokenizer.padding_side == "right"  # left padding only for the call
    assert strip_placeholders("<image>\nwhat?") == "what?" and strip_placeholders("what?") == "what?"


def test_run_stats_from_a_real_trace_match_the_schedule():
    proc = build_processor()
    model = build_model(seed=0, tokenizer=proc.tokenizer).eval()
    samples = scenes.benchmark(3)
    inputs = build_inputs(proc, [s.image for s in samples], [s.question for s in samples])
    schedule = DropSchedule.parse("2:0.5,4:0.5,6:0")
    with v2drop.apply(model, schedule) as session, torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=proc.tokenizer.pad_token_id)
    stats = EvalStats()
    stats.add(session.trace, [True, True, False], generate_seconds=1.5, generated_tokens=4)
    metrics = stats.metrics()
    assert metrics["samples"] == 2 and metrics["vision_tokens"] == 256
    assert metrics["vision_tokens_kept"] == pytest.approx(schedule.average_kept(8, 256))  # 112
    assert session.trace.prefill_seconds > 0
    assert metrics["prefill_seconds_total"] == pytest.approx(session.trace.prefill_seconds)
    assert metrics["peak_memory_mb"] > 0

    other = EvalStats(samples=2, vision_tokens=512, vision_tokens_kept=512.0, prefill_seconds=1.0,
                     peak_memory_bytes=10 ** 12, memory_kind="cuda_max_allocated")
    total = EvalStats.merged([stats, other]).metrics()
    assert total["samples"] == 4 and total["processes"] == 2
    assert total["vision_tokens_kept"] == pytest.approx((2 * 112 + 512) / 4)
    assert total["peak_memory_mb"] == pytest.approx(10 ** 12 / 2 ** 20)
    assert total["prefill_seconds_total"] == pytest.approx(session.trace.prefill_seconds + 1.0)
