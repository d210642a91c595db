"""The GPU check's CPU dry run: every section runs end to end and writes its JSON and table, so
the script works the first time it meets a GPU."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_check


def test_dry_run_writes_every_section(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = report["rows"]
    assert report["dry_run"] and set(report["section_seconds"]) == set(gpu_check.SECTIONS)
    assert {r["section"] for r in rows} == set(gpu_check.SECTIONS)
    exact = [r for r in rows if r["section"] == "exact"]
    assert exact[0]["status"] == "PASS" and exact[0]["config"] == "sdpa"
    memory = {r["config"] for r in rows if r["section"] == "memory"}
    assert memory == {"none", "v2drop", "fastv", "fastv-lite"}
    latency = [r for r in rows if r["section"] == "latency"]
    assert {r["model"] for r in latency} == {"llava-onevision-0.5b", "llava-1.5-7b", "llava-next-7b"}
    assert all(r["prefill_s"] > 0 and r["end_to_end_s"] > 0 for r in latency)
    assert {r["config"] for r in latency} == {"none", "paper-192", "paper-128", "paper-64"}
    paper = [r for r in latency if r["config"] == "paper-64"]
    assert all(r["average_kept"] < r["vision_tokens"] / 3 for r in paper)
    video = [r for r in rows if r["section"] == "video"]
    assert all(r["frames"] == 4 and r["vision_tokens"] > 4 * 100 for r in video)
    ragged = [r for r in rows if r["section"] == "ragged"]
    assert ragged[0]["status"] == "PASS" and ragged[0]["config"] == "sdpa", ragged[0]
    assert ragged[1]["config"] == "flash_attention_2" and ragged[1]["status"] == "SKIP"   # no CUDA here
    counts = [int(c) for c in ragged[0]["vision_tokens"].split("/")]
    assert counts[0] > counts[1] > counts[2] == 0                     # two image sizes and a text-only row
    throughput = [r for r in rows if r["section"] == "throughput"]
    assert {r["config"] for r in throughput} >= {"same b=1 none", "mixed b=4 v2drop", "targets"}
    assert all(r["images_per_s"] > 0 for r in throughput if r["config"] != "targets")
    assert throughput[-1]["mixed_over_same_b4"] is not None
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("| section |") and table.count("\n") == len(rows) + 2


def test_refuses_to_run_for_real_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path)])
