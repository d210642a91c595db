"""The cell language (``shapes.cells``) and the cell-format documents of ``shapes.pipeline``."""

from __future__ import annotations

import pytest
import torch

from shapes import cells, scenes
from shapes.model import NUM_VISION_TOKENS, build_processor, build_tokenizer
from shapes.pipeline import Pipeline, build_parser
from shapes.train import IMAGE_START, centre_patch


def _objects():
    return [scenes.Obj("circle", "red", x=20.0, y=20.0, r=14.0),      # top left, large
            scenes.Obj("star", "blue", x=100.0, y=100.0, r=10.0)]     # bottom right, small


def test_cell_words_mark_objects_and_their_centres():
    words = cells.cell_words(_objects())
    assert len(words) == cells.NUM_CELLS == NUM_VISION_TOKENS
    assert set(words) <= set(cells.CELL_WORDS)
    red, blue = _objects()
    assert words[centre_patch(red)] == "red_circle_tl"
    assert words[centre_patch(blue)] == "blue_star_br"
    centres = [w for w in words if w.count("_") == 2]
    assert sorted(centres) == ["blue_star_br", "red_circle_tl"]  # one centre word per object
    assert words.count("red_circle") >= 8   # a large circle covers many patches
    assert words[0] == words[15] == words[255] == cells.BACKGROUND  # corners are empty


def test_the_halves_language_writes_each_object_patch_s_own_half_and_marks_centres_plain():
    red, blue = _objects()
    centres, halves = cells.cell_words(_objects()), cells.cell_words(_objects(), "halves")
    assert set(halves) <= set(cells.CELL_WORDS)
    assert halves[centre_patch(red)] == "red_circle" and halves[centre_patch(blue)] == "blue_star"
    for cell, (c, h) in enumerate(zip(centres, halves)):
        assert (c == cells.BACKGROUND) == (h == cells.BACKGROUND)     # the same patches are objects
        if c != cells.BACKGROUND and cell not in (centre_patch(red), centre_patch(blue)):
            assert h == f"{c}_{cells.half_of(cell)}"                  # covered: the patch's own half
    straddling = [scenes.Obj("square", "green", x=64.0, y=40.0, r=16.0)]  # on the left/right midline
    words = cells.cell_words(straddling, "halves")
    assert {"green_square_tl", "green_square_tr"} <= set(words)
    with pytest.raises(ValueError, match="unknown cell language 'corners'"):
        cells.cell_words(_objects(), "corners")


def test_each_language_s_centre_words_count_the_objects():
    for i in range(20):
        objs = scenes.sample(scenes.TRAIN_SEED, i, balanced=False).objects
        for language in cells.LANGUAGES:
            kinds = [cells.kind_of(w, language) for w in cells.cell_words(objs, language)]
            assert kinds.count("centre") == len(objs)


def test_cell_words_option_picks_the_language_of_the_documents():
    pipe = _pipeline("cells", "--cell-words", "halves")
    sample = scenes.sample(scenes.TRAIN_SEED, 0, n_extra=2)
    words = pipe.encoder.tok.convert_ids_to_tokens(pipe.cell_ids(sample))
    assert words == cells.cell_words(sample.objects, "halves") != cells.cell_words(sample.objects)


def test_half_of_splits_the_raster_at_the_midlines():
    assert [cells.half_of(c) for c in (0, 15, 16 * 15, 255)] == ["tl", "tr", "bl", "br"]
    assert cells.half_of(7 * 16 + 7) == "tl" and cells.half_of(8 * 16 + 8) == "br"


def test_generated_scenes_have_one_centre_word_per_object():
    for i in range(20):
        s = scenes.sample(scenes.TRAIN_SEED, i, balanced=False)
        words = cells.cell_words(s.objects)
        assert sum(w.count("_") == 2 for w in words) == len(s.objects)


def test_extra_words_extend_the_vocabulary_without_moving_it():
    base, wide = build_tokenizer(), build_tokenizer(cells.CELL_WORDS)
    assert all(wide.convert_tokens_to_ids(w) == i for w, i in base.get_vocab().items())
    ids = wide.encode(" ".join(cells.CELL_WORDS), add_special_tokens=False)
    assert len(ids) == len(cells.CELL_WORDS) and wide.unk_token_id not in ids
    assert len(build_processor(extra_words=cells.CELL_WORDS).tokenizer) == len(base) + len(cells.CELL_WORDS)


def _pipeline(text_format: str = "cells", *flags: str) -> Pipeline:
    args = build_parser().parse_args(["--text-format", text_format, "--val-size", "8", *flags])
    return Pipeline(args, torch.device("cpu"))


def test_documents_put_the_loss_on_the_text_after_the_prefix_only():
    pipe = _pipeline()
    samples = [scenes.sample(scenes.TRAIN_SEED, i, n_extra=3) for i in range(2)]
    ids, attention, labels = pipe.documents(samples, [pipe.cell_ids(s) for s in samples])
    words = pipe.encoder.tok.convert_ids_to_tokens(ids[0, 1:1 + NUM_VISION_TOKENS].tolist())
    assert words == cells.cell_words(samples[0].objects)
    assert (labels[:, : 1 + NUM_VISION_TOKENS] == -100).all()
    n = int(attention[0].sum())
    assert (labels[0, 1 + NUM_VISION_TOKENS: n] == ids[0, 1 + NUM_VISION_TOKENS: n]).all()
    assert (labels[0, n:] == -100).all()
    answer = pipe.encoder.words(samples[0].answer)[0]
    assert answer in labels[0].tolist()


def test_alignment_documents_put_the_picture_where_the_cells_were():
    pipe = _pipeline()
    samples = [scenes.sample(scenes.TRAIN_SEED, i, n_extra=2) for i in range(3)]
    batch = pipe.align_batch(samples)
    assert (batch["input_ids"] == pipe.encoder.image).sum(1).tolist() == [NUM_VISION_TOKENS] * 3
    assert batch["pixel_values"].shape == (3, 3, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)
    loss = pipe.model(**batch).loss
    assert torch.isfinite(loss)


def test_document_accuracy_reports_every_question_type():
    from shapes.pipeline import document_accuracy

    acc = document_accuracy(_pipeline(), 8, picture=True)
    assert set(acc) == {"all", *scenes.QTYPES}
    assert all(0.0 <= v <= 1.0 for v in acc.values())


def test_cell_curriculum_writes_object_cells_and_a_growing_share_of_the_background():
    from shapes.pipeline import background_share

    assert [background_share(s, 100, 0.5) for s in (0, 25, 50, 99)] == [0.0, 0.5, 1.0, 1.0]
    assert background_share(0, 100, 0.0) == 1.0
    pipe = _pipeline()
    sample = scenes.sample(scenes.TRAIN_SEED, 0, n_extra=2)
    words = cells.cell_words(sample.objects)
    objects_only = pipe.encoder.tok.convert_ids_to_tokens(pipe.cell_ids(sample, 0.0, (1, 2, 3)))
    assert objects_only == [w for w in words if w != cells.BACKGROUND]   # raster order kept
    half = pipe.cell_ids(sample, 0.5, (1, 2, 3))
    assert len(objects_only) < len(half) < len(words) and half == pipe.cell_ids(sample, 0.5, (1, 2, 3))
    ids, attention, labels = pipe.documents([sample, sample], [pipe.cell_ids(sample, 0.0, (1,)), pipe.cell_ids(sample)])
    short = 1 + len(objects_only)
    assert (labels[0, :short] == -100).all() and labels[0, short] == ids[0, short]
    assert (labels[1, : 1 + NUM_VISION_TOKENS] == -100).all()


def test_cell_chats_are_the_picture_chats_with_the_cells_in_the_image_tokens_place():
    pipe = _pipeline("cell-chats")
    samples = [scenes.sample(scenes.TRAIN_SEED, i, n_extra=3) for i in range(2)]
    picture = pipe.align_batch(samples)                  # what alignment and the app see
    short = pipe.cell_ids(samples[1], 0.0, (1,))         # objects only (--cell-curriculum)
    ids, attention, labels = pipe.chats_with(samples, [pipe.cell_ids(samples[0]), short])
    start, end = IMAGE_START, IMAGE_START + NUM_VISION_TOKENS
    assert (picture["input_ids"][0, start:end] == pipe.encoder.image).all()
    assert pipe.encoder.tok.convert_ids_to_tokens(ids[0, start:end].tolist()) == cells.cell_words(samples[0].objects)
    n = int(attention[0].sum())
    assert ids[0, :start].tolist() == picture["input_ids"][0, :start].tolist()
    assert ids[0, end:n].tolist() == picture["input_ids"][0, end:n].tolist()   # same turns after the prefix
    assert labels[0, :n].tolist() == picture["labels"][0, :n].tolist()         # loss on the answers only
    m = int(attention[1].sum())
    cut = NUM_VISION_TOKENS - len(short)
    assert labels[1, start + len(short):m].tolist() == picture["labels"][1, end:m + cut].tolist()
    query = pipe.query_row([pipe.encoder.image] * NUM_VISION_TOKENS, samples[0].question)
    assert query == picture["input_ids"][0, :len(query)].tolist()   # held-out queries in the same template


def test_init_from_starts_a_split_recipe_at_its_stage_with_the_saved_weights(tmp_path, capsys):
    from shapes.pipeline import main

    source = _pipeline()
    with torch.no_grad():
        source.model.model.vision_tower.embeddings.patch_embedding.weight.add_(1.0)  # unlike any fresh init
    torch.save({"model": source.model.state_dict()}, tmp_path / "text.pt")
    out = tmp_path / "model"
    main(["--text-format", "cells", "--init-from", str(tmp_path / "text.pt"), "--start-stage", "align",
          "--align-steps", "1", "--align-batch-size", "2", "--instruct-steps", "0", "--val-size", "8",
          "--threads", "1", "--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(out)])
    log = capsys.readouterr().out
    assert "stage vision" not in log and "stage text" not in log and "stage align: steps 0..1" in log
    saved = torch.load(tmp_path / "ckpt" / "align.pt")["model"]
    before = source.model.state_dict()
    tower = [k for k in saved if "vision_tower" in k]
    assert tower and all(torch.equal(saved[k], before[k]) for k in tower)          # frozen, from the file
    projector = [k for k in saved if "multi_modal_projector" in k]
    assert any(not torch.equal(saved[k], before[k]) for k in projector)           # align trained it
    assert (out / "training_args.json").exists()


def test_align_lm_layers_train_at_their_own_learning_rate_and_the_rest_stays_frozen():
    args = build_parser().parse_args(["--text-format", "cells", "--align-lm-layers", "2", "--align-lr", "2e-3",
                                      "--align-lm-lr", "2e-4"])
    pipe = Pipeline(args, torch.device("cpu"))
    params = pipe.trained_parameters("align")
    layers = pipe.model.model.language_model.layers
    trained = {id(p) for p in params}
    assert all(id(p) in trained for p in layers[1].parameters())
    assert not any(id(p) in trained for p in layers[2].parameters())          # only the first two
    groups = pipe.optimizer_groups("align", params)
    by_param = {id(p): g.get("lr_scale", 1.0) for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(params)
    assert by_param[id(layers[0].self_attn.q_proj.weight)] == pytest.approx(0.1)
    assert by_param[id(next(pipe.model.model.multi_modal_projector.parameters()))] == 1.0
    assert all("lr_scale" not in g for g in pipe.optimizer_groups("instruct", pipe.trained_parameters("instruct")))
    tower = pipe.model.model.vision_tower
    assert not any(id(p) in {id(q) for q in pipe.trained_parameters("instruct")} for p in tower.parameters())


def test_instruct_vision_lr_unfreezes_the_tower_at_its_own_rate():
    args = build_parser().parse_args(["--text-format", "cells", "--instruct-lr", "2e-4",
                                      "--instruct-vision-lr", "4e-5"])
    pipe = Pipeline(args, torch.device("cpu"))
    params = pipe.trained_parameters("instruct")
    m = pipe.model.model
    trained = {id(p) for p in params}
    for part in (m.vision_tower, m.multi_modal_projector, m.language_model):
        assert all(id(p) in trained for p in part.parameters())
    scale = {id(p): g.get("lr_scale", 1.0) for g in pipe.optimizer_groups("instruct", params) for p in g["params"]}
    assert scale[id(m.vision_tower.embeddings.patch_embedding.weight)] == pytest.approx(0.2)
    assert scale[id(m.language_model.layers[0].mlp.up_proj.weight)] == 1.0
    pipe.freeze_all_but(params)
    pipe.chat_loss([scenes.sample(scenes.TRAIN_SEED, i, n_extra=2) for i in range(2)]).backward()
    assert m.vision_tower.embeddings.patch_embedding.weight.grad is not None   # the gradient reaches the tower


def test_text_turns_sets_how_many_questions_a_text_document_asks():
    class Seen(Exception):
        """Carries the samples a text batch was built from, before any forward pass."""

    def questions(extra: list[str]) -> int:
        pipe = Pipeline(build_parser().parse_args(["--text-format", "cells", *extra]), torch.device("cpu"))

        def documents(samples, prefixes):
            raise Seen(samples)

        pipe.documents = documents
        with pytest.raises(Seen) as seen:
            pipe.text_loss(0, 8)
        return sum(len(s.extra) for s in seen.value.args[0])

    few, default, many = questions(["--text-turns", "2"]), questions([]), questions(["--text-turns", "30"])
    assert few == 8 * 2 and default <= 8 * 10  # the default asks --max-turns (10) at most
    assert many > default + 8 * 3             # scenes have ~18 questions to ask on average


def test_readout_finds_each_patch_s_cell_word_when_the_patches_are_the_cell_words():
    pipe = _pipeline()
    scenes_objects = [scenes.sample(scenes.TRAIN_SEED, i, balanced=False).objects for i in range(3)]
    embedding = pipe.model.get_input_embeddings()
    words = [pipe.cell_ids(scenes.Sample(None, "", "", "", objs, [])) for objs in scenes_objects]
    exact = embedding(torch.tensor(words))                                   # (3, 256, hidden)
    shares = cells.readout(exact, embedding, pipe.processor.tokenizer, scenes_objects)
    assert shares == {"background": 1.0, "covered": 1.0, "centre": 1.0, "centre colour and shape": 1.0}
    ids = pipe.processor.tokenizer.convert_tokens_to_ids
    exact = embedding(torch.tensor([ids(cells.cell_words(o, "halves")) for o in scenes_objects]))
    assert cells.readout(exact, embedding, pipe.processor.tokenizer, scenes_objects, "halves")["centre"] == 1.0
    assert cells.readout(exact, embedding, pipe.processor.tokenizer, scenes_objects)["centre"] == 0.0  # wrong language
    blank = embedding(torch.full((3, 256), words[0][0]))                     # every patch read as one word
    shares = cells.readout(blank, embedding, pipe.processor.tokenizer, scenes_objects)
    assert shares["covered"] == 0.0 and shares["centre"] == 0.0


def test_cell_readout_measures_a_saved_stage(tmp_path, capsys):
    from shapes.pipeline import main

    torch.save({"model": _pipeline().model.state_dict()}, tmp_path / "align.pt")
    main(["--text-format", "cells", "--cell-readout", str(tmp_path / "align.pt"), "--val-size", "4", "--threads", "1"])
    out = capsys.readouterr().out
    assert "patches whose nearest cell word is their own (2 held-out scenes): background" in out and "centre colour" in out
    with pytest.raises(SystemExit):
        main(["--cell-readout", str(tmp_path / "align.pt")])           # the caption format has no cell words
    assert "needs --text-format cells" in capsys.readouterr().err
