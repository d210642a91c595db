"""The Shapes evaluation core and command."""

import json
import os
import subprocess
import sys

import pytest

from shapes import scenes
from shapes.evaluate import evaluate, first_word, format_table, object_variation
from shapes.model import DEFAULT_MODEL_DIR, build_model, build_processor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = os.path.join(DEFAULT_MODEL_DIR, "model.safetensors")


def test_first_word():
    assert first_word(" Red <|end|>") == "red"
    assert first_word("") == ""


def test_evaluate_core_on_random_model():
    proc = build_processor()
    model = build_model(seed=0, tokenizer=proc.tokenizer).eval()
    qs = scenes.benchmark(8)
    res = evaluate(model, proc, qs, batch_size=4, return_predictions=True)
    assert res["n"] == 8 and set(res["per_type"]) == set(scenes.QTYPES)
    assert 0.0 <= res["accuracy"] <= 1.0 and len(res["predictions"]) == 8
    # batching (left padding) does not change answers
    res1 = evaluate(model, proc, qs, batch_size=1, return_predictions=True)
    assert [p["prediction"] for p in res1["predictions"]] == [p["prediction"] for p in res["predictions"]]
    assert "| none |" in format_table([dict(res, method="none")])


@pytest.mark.skipif(not os.path.exists(WEIGHTS), reason=f"trained Shapes weights missing ({WEIGHTS})")
def test_evaluate_command_small_slice(tmp_path):
    out = tmp_path / "res.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "shapes.evaluate", "--n", "16", "--methods", "none,v2drop",
           "--budgets", "0.5", "--variation", "4", "--out", str(out)]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {row["method"]: row for row in data["rows"]}
    assert rows["none"]["n"] == 16 and rows["none"]["accuracy"] >= 0.2
    assert "| none |" in r.stdout
    if "v2drop" in rows:
        assert rows["v2drop"]["avg_kept"] < 256
    assert [v["layer"] for v in data["variation"]] == [1, 2, 4, 6] and "object patches" in r.stdout


def test_object_variation_is_the_v2drop_score_on_object_and_background_patches():
    import torch

    from shapes.evaluate import build_inputs
    from shapes.truth import objects_mask

    proc = build_processor()
    model = build_model(seed=0, tokenizer=proc.tokenizer).eval()
    samples = scenes.benchmark(3)
    rows = object_variation(model, proc, samples, layers=(1, 3), batch_size=2)
    inputs = build_inputs(proc, [s.image for s in samples], [s.question for s in samples])
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    vision = inputs["input_ids"] == model.config.image_token_id
    score = (hidden[3] - hidden[2]).norm(dim=-1)[vision].view(3, 256)  # layer 3's score, by hand
    on_objects = torch.stack([torch.from_numpy(objects_mask(s.objects)) for s in samples])
    assert [r["layer"] for r in rows] == [1, 3]
    assert abs(rows[1]["object"] - score[on_objects].mean().item()) < 1e-3
    assert abs(rows[1]["background"] - score[~on_objects].mean().item()) < 1e-3
    assert 0.0 <= rows[1]["object_in_top_half"] <= 1.0
