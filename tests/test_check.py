"""``python -m v2drop.check`` on saved checkpoint fixtures (real configs and processors, narrowed
language models): the table, the exit codes, and that a failed invariant fails the command."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen2Config

from benchmarks import checkpoints
from v2drop import check


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: checkpoints.save(name, root / name) for name in ("qwen2-vl-2b", "llava-1.5-7b")}


@pytest.mark.parametrize("name", ["qwen2-vl-2b", "llava-1.5-7b"])
def test_check_passes_on_a_fixture(saved, name, tmp_path, capsys):
    out = tmp_path / "check.json"
    code = check.main([str(saved[name]), "--device", "cpu", "--repeats", "1", "--max-new-tokens", "4",
                       "--json", str(out)])
    table = capsys.readouterr().out
    assert code == 0, table
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert {r["status"] for r in results.values()} <= {"PASS", "INFO"}
    expected = {"qwen2-vl-2b": 324, "llava-1.5-7b": 576}[name]   # the bundled 512×512 photo
    assert f"{expected} vision tokens, {expected} layout cells" in results["vision tokens and layout"]["detail"]
    assert "predicted by FLOPs" in results["prefill speed-up"]["detail"]
    assert "all checks passed" in table


def test_a_failed_invariant_fails_the_command(saved, monkeypatch, capsys):
    monkeypatch.setattr(check, "TOLERANCE", {torch.float32: -1.0})   # no difference is small enough
    code = check.main([str(saved["qwen2-vl-2b"]), "--device", "cpu", "--repeats", "1", "--max-new-tokens", "2"])
    table = capsys.readouterr().out
    assert code == check.EXIT_FAILED
    assert "FAIL  keep-all" in table and "1 check(s) FAILED" in table


def test_unsupported_model_exits_non_zero(tmp_path, capsys):
    Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=64, vocab_size=100).save_pretrained(tmp_path)
    assert check.main([str(tmp_path)]) == check.EXIT_UNSUPPORTED
    assert "does not support" in capsys.readouterr().err


def test_missing_model_exits_non_zero(tmp_path, capsys):
    assert check.main([str(tmp_path / "nothing-here")]) in (check.EXIT_LOAD, check.EXIT_UNSUPPORTED)
    assert capsys.readouterr().err.strip()


def test_a_crashing_check_is_a_failed_row(saved, monkeypatch, capsys):
    def broken(*_args, **_kwargs):
        raise RuntimeError("cache mismatch")

    monkeypatch.setattr(check, "check_cache", broken)
    code = check.main([str(saved["qwen2-vl-2b"]), "--device", "cpu", "--repeats", "1", "--max-new-tokens", "2"])
    table = capsys.readouterr().out
    assert code == check.EXIT_FAILED and "FAIL  KV cache = no cache" in table and "RuntimeError: cache mismatch" in table
