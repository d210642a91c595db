"""The standard LVLM training pipeline (``shapes.pipeline``): what each stage trains, what it
freezes, the text corpus, and exact resumption."""

import json

import pytest
import torch

from shapes import pipeline, scenes

TINY = ["--vision-steps", "2", "--text-steps", "2", "--align-steps", "2", "--instruct-steps", "3",
        "--vision-batch-size", "2", "--text-batch-size", "2", "--align-batch-size", "2", "--instruct-batch-size", "2",
        "--max-turns", "2", "--log-every", "1000", "--val-every", "1000", "--val-size", "4", "--threads", "1", "--device", "cpu"]


def _weights(model: torch.nn.Module, part: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if part in k}


@pytest.fixture(scope="module")
def pipe():
    args = pipeline.build_parser().parse_args(TINY)
    return pipeline.Pipeline(args, torch.device("cpu"))


@pytest.mark.parametrize("stage, trained, frozen", [
    ("vision", ["vision_tower"], ["language_model", "multi_modal_projector"]),
    ("text", ["language_model"], ["vision_tower", "multi_modal_projector"]),
    ("align", ["multi_modal_projector"], ["vision_tower", "language_model"]),
    ("instruct", ["multi_modal_projector", "language_model"], ["vision_tower"]),
])
def test_each_stage_trains_its_part_and_freezes_the_rest(pipe, tmp_path, stage, trained, frozen):
    progress = pipeline.Progress(pipe, str(tmp_path), every_minutes=60)
    progress.stage = stage
    before = {part: _weights(pipe.model, part) for part in trained + frozen}
    run = pipeline.Stage(stage, 2, 2, 1e-3, 1)
    pipeline.run_stage(pipe, run, progress)
    for part in frozen:
        after = _weights(pipe.model, part)
        assert all(torch.equal(before[part][k], after[k]) for k in after), f"{stage} changed {part}"
    for part in trained:
        after = _weights(pipe.model, part)
        assert any(not torch.equal(before[part][k], after[k]) for k in after), f"{stage} left {part} alone"


def test_text_documents_are_caption_then_answered_questions():
    s = scenes.sample(3, 1, n_extra=2)
    doc = pipeline.text_document(s)
    assert doc.startswith(scenes.caption(s.objects) + " ")
    assert f"{s.question} {s.answer} ." in doc and all(f"{q} {a} ." in doc for q, a, _ in s.extra)


def test_text_stage_sees_no_pictures_and_scores_every_token(pipe):
    loss = pipe.text_loss(0, 2)
    vocab = pipe.model.config.text_config.vocab_size
    assert 0.5 * torch.log(torch.tensor(vocab)) < loss < 2 * torch.log(torch.tensor(vocab))  # untrained: ~ln V


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    pipeline.main(TINY + ["--out", str(straight / "model"), "--ckpt-dir", str(straight)])
    resumed = tmp_path / "resumed"
    calls = {"n": 0}
    original = pipeline.Pipeline.batch_loss

    def stop_in_instruct(self, stage, step, batch_size):
        if stage == "instruct" and step == 2:
            raise KeyboardInterrupt
        return original(self, stage, step, batch_size)

    args = TINY + ["--out", str(resumed / "model"), "--ckpt-dir", str(resumed), "--ckpt-minutes", "0"]
    monkeypatch.setattr(pipeline.Pipeline, "batch_loss", stop_in_instruct)
    with pytest.raises(KeyboardInterrupt):
        pipeline.main(args)
    monkeypatch.setattr(pipeline.Pipeline, "batch_loss", original)
    assert torch.load(resumed / "state.pt", weights_only=False)["stage"] == "instruct"
    pipeline.main(args + ["--resume"])
    from safetensors.torch import load_file

    a, b = load_file(straight / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((resumed / "model" / "training_args.json").read_text())
    assert set(record["stage_minutes"]) == set(pipeline.STAGES) and "no attention" in record["recipe"]


def test_saved_model_is_a_stock_llava_that_answers(tmp_path):
    pipeline.main(TINY + ["--out", str(tmp_path / "model"), "--ckpt-dir", str(tmp_path)])
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "model")
    processor = AutoProcessor.from_pretrained(tmp_path / "model")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    s = scenes.sample(9, 0)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = model.generate(**processor(images=s.image, text=text, return_tensors="pt"), max_new_tokens=2)
    assert out.shape[1] >= 1


def test_picture_gain_is_zero_when_the_projector_passes_nothing(pipe):
    own, other = pipeline.picture_gain(pipe, 4)
    assert own != other  # an untrained projector still lets the picture move the loss
    projector = pipe.model.model.multi_modal_projector
    saved = {k: v.clone() for k, v in projector.state_dict().items()}
    try:
        with torch.no_grad():
            for p in projector.parameters():
                p.zero_()
        own, other = pipeline.picture_gain(pipe, 4)
        assert own == pytest.approx(other, abs=1e-6)
    finally:
        projector.load_state_dict(saved)


def test_balanced_questions_take_the_types_in_turn_and_keep_their_order():
    extra = [(f"e{i}", "yes", "exist") for i in range(5)] + [("c0", "red", "color"), ("n0", "one", "count")]
    extra = extra[3:] + extra[:3]  # a scene's random order: e3 e4 c0 n0 e0 e1 e2
    assert [q for q, _, _ in pipeline.balanced_questions(extra, 3)] == ["e3", "c0", "n0"]  # one of each type
    assert [q for q, _, _ in pipeline.balanced_questions(extra, 5)] == ["e3", "e4", "c0", "n0", "e0"]
    assert pipeline.balanced_questions(extra, 20) == extra  # asks for more than there are: all, unchanged
    assert pipeline.balanced_questions(extra, 0) == []


def test_balanced_mix_asks_every_type_more_evenly_than_a_random_draw():
    def type_shares(mix: str) -> dict[str, float]:
        args = pipeline.build_parser().parse_args(TINY + ["--text-format", "cells", "--question-mix", mix])
        samples = pipeline.Pipeline(args, torch.device("cpu")).scenes_for("text", 0, 64, n_extra=6)
        kinds = [t for s in samples for _, _, t in s.extra]
        return {t: kinds.count(t) / len(kinds) for t in scenes.QTYPES}

    natural, balanced = type_shares("natural"), type_shares("balanced")
    assert balanced["color"] > 1.3 * natural["color"] and balanced["exist"] < natural["exist"]
    assert max(balanced.values()) - min(balanced.values()) < max(natural.values()) - min(natural.values())


def test_balanced_mix_draws_the_same_scenes_as_the_natural_one():
    def first_scenes(mix: str) -> list[scenes.Sample]:
        args = pipeline.build_parser().parse_args(TINY + ["--question-mix", mix])
        return pipeline.Pipeline(args, torch.device("cpu")).scenes_for("align", 3, 4, n_extra=2)

    for a, b in zip(first_scenes("natural"), first_scenes("balanced")):
        assert (a.question, a.objects) == (b.question, b.objects) and len(a.extra) == len(b.extra) == 2
