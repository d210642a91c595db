"""The model report card (``shapes.report``): answer form and grouped accuracy."""

import json

from shapes import drawn, report, scenes
from shapes.model import build_model, build_processor


def test_one_word_means_one_vocabulary_word_then_the_end_token():
    assert report.is_one_word([10, 3], eos=3, words={10, 11})
    assert not report.is_one_word([10, 10, 3], eos=3, words={10})  # "red red"
    assert not report.is_one_word([10], eos=3, words={10})  # no end token within the budget
    assert not report.is_one_word([3], eos=3, words={10})  # an empty answer
    assert not report.is_one_word([2, 3], eos=3, words={10})  # a special token is not a word


def test_score_groups_accuracy_and_lists_malformed_answers(monkeypatch):
    processor = build_processor()
    model = build_model(seed=0, tokenizer=processor.tokenizer).eval()
    samples = drawn.benchmark(8)
    vocab = processor.tokenizer.get_vocab()
    eos = model.generation_config.eos_token_id
    replies = [[vocab[s.answer], eos] if k % 2 == 0 else [vocab[s.answer], vocab[s.answer], eos]
               for k, s in enumerate(samples)]
    replies[2] = [vocab["no" if samples[2].answer != "no" else "yes"], eos]  # one wrong, well-formed answer
    monkeypatch.setattr(report, "answer_tokens", lambda *a, **k: replies)
    card = report.score(model, processor, samples, [drawn.condition_of(i) for i in range(8)])
    assert card["accuracy"]["all"] == 7 / 8  # "red red" still starts with the right word
    assert card["not_one_word"] == 4 and [b["index"] for b in card["not_one_word_examples"]] == [1, 3, 5, 7]
    assert card["accuracy"]["background=white"] == 7 / 8 and card["accuracy"]["antialias=True"] == 3 / 4


def test_report_command_writes_every_section(tmp_path):
    processor = build_processor(str(tmp_path / "m"))
    build_model(seed=0, tokenizer=processor.tokenizer).save_pretrained(tmp_path / "m")
    card = report.main(["--model", str(tmp_path / "m"), "--n", "4", "--drawn", "4", "--variation", "2",
                        "--threads", "1", "--out", str(tmp_path / "r.json")])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["benchmark"]["n"] == 4 and saved["drawn"]["n"] == 4
    assert [v["layer"] for v in saved["variation"]] == list(range(1, 8)) == [v["layer"] for v in card["variation"]]
    assert {"type=" + t for t in scenes.QTYPES[:4]} <= set(saved["benchmark"]["accuracy"])
