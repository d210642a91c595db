"""Video rows of the benchmark: several frames' tokens form one drop pool."""

import json

import torch

import v2drop
from benchmarks import bench
from benchmarks import models as bench_models


def test_video_spec_pools_all_frames():
    model, spec = bench_models.build("tiny-video")
    inputs = bench_models.make_inputs(model, spec)
    assert spec.num_vision_tokens == 3 * 16
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 48
    with v2drop.apply(model, "1:0.5,2:0.5") as run, torch.no_grad():
        model(**inputs)
    kept = run.trace.samples[0].kept[1]
    assert len(kept) == 24
    assert len({i // 16 for i in kept}) >= 2, "the kept tokens come from several frames"


def test_bench_runs_on_video_spec(tmp_path):
    out = bench.main(["--model", "tiny-video", "--methods", "none,v2drop,fastv-lite", "--repeats", "1",
                      "--warmup", "0", "--max-new-tokens", "2", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "speed-tiny-video.json").read_text())
    assert data and out
