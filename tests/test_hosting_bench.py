"""benchmarks.hosting on a narrowed fixture: the record it writes and what the cap changes."""

from __future__ import annotations

import torch

from benchmarks import hosting


def test_measure_model_records_both_first_tokens():
    full = hosting.measure_model("llava-onevision-0.5b", "full", torch.float32, repeats=1, size="narrow")
    base = hosting.measure_model("llava-onevision-0.5b", "base", torch.float32, repeats=1, size="narrow")
    assert (full["vision_tokens"], base["vision_tokens"]) == (2929, 1317)   # the 640×480 photo
    for record in (full, base):
        run = record["runs"][0]
        assert 0 < run["unpruned_first_token_s"] < run["both_first_tokens_s"]
        assert run["both_first_tokens_cpu_s"] > 0 and record["peak_rss_bytes"] > 0
        assert record["schedule"] == "1:0.5,2:0.3,3:0" and record["cold"]["both_first_tokens_s"] > 0
    assert "base resolution" in base["cap_label"]
