"""The Shapes training command: its training aids and a two-step end-to-end run with resume."""

import json
import math
import os

import torch

from shapes import scenes
from shapes.model import build_model, build_processor
from shapes.train import (DEFAULT_CKPT_DIR, GRID, IMAGE_START, Encoder, HopProbe, attention_losses, centre_patch,
                          count_retrieval_loss, eager_attention_only_in, focus_samples, hop_facts,
                          init_position_embeddings, install_supervision_hooks, main, make_aux_head, make_batch,
                          parse_args, patch_labels, train_samples)


def test_patch_labels_mark_the_object_under_each_patch():
    obj = scenes.Obj("square", "blue", x=20.0, y=100.0, r=15.0)
    shape_l, color_l, centre = patch_labels([obj])
    k = int(100 // 8) * GRID + int(20 // 8)  # the patch holding the centre (row 12, col 2)
    assert shape_l[k] == 1 + scenes.SHAPES.index("square") and color_l[k] == 1 + scenes.COLOR_NAMES.index("blue")
    assert centre.sum() == 1 and centre[k] == 1
    assert shape_l[0] == 0 and color_l[GRID * GRID - 1] == 0  # far corners are background


def _training_batch(n_scenes):
    """(tokenizer, scenes, input ids, attention targets) of a small stage-2 batch (step 3)."""
    tok = build_processor().tokenizer
    samples = train_samples(1234, 3, n_scenes, max_turns=5)
    batch, targets = make_batch(Encoder(tok), samples, 5)
    return tok, samples, batch["input_ids"], targets


def test_attention_targets_point_at_the_shape_word_and_its_objects():
    tok, samples, ids, targets = _training_batch(4)
    assert len(targets) >= len(samples)
    for b, word, assistant, masks, _ in targets:
        w = tok.convert_ids_to_tokens(int(ids[b, word]))
        assert w in scenes.SHAPES or w in scenes.PLURAL.values()
        assert tok.convert_ids_to_tokens(int(ids[b, assistant])) == "<|assistant|>" and word < assistant
        shape = w if w in scenes.SHAPES else {v: k for k, v in scenes.PLURAL.items()}[w]
        before = tok.convert_ids_to_tokens(int(ids[b, word - 1]))
        named = [o for o in samples[b].objects
                 if o.shape == shape and (before not in scenes.COLORS or o.color == before)]
        assert masks.shape == (len(named), GRID * GRID)  # one mask per named object, none when absent
        for o, mask in zip(sorted(named, key=centre_patch), sorted(masks, key=lambda m: int(m.float().argmax()))):
            assert mask[centre_patch(o)]
    assert any(len(m) == 0 for *_, m, _ in targets) and any(len(m) > 1 for *_, m, _ in targets)
    assert all(int(m.sum()) == len(m) for *_, m, _ in targets)  # default: one centre patch per object
    whole = make_batch(Encoder(tok), samples, 5, retrieve="object")[1]
    assert any(int(m.sum()) > len(m) for *_, m, _ in whole)  # whole objects cover several patches
    for (*_, centre, _), (*_, full, _) in zip(targets, whole):
        assert bool((full | centre).eq(full).all())  # the centre is one of the object's patches


def test_attention_losses_are_lowest_on_the_target_pattern():
    proc = build_processor()
    samples = train_samples(1234, 3, 4, max_turns=5)
    batch, targets = make_batch(Encoder(proc.tokenizer), samples, 5)
    n, L = len(samples), batch["input_ids"].shape[1]

    def pattern(object_share):
        """Attention with <s> : each named object = 1 : object_share (spread over the object's patches)."""
        att = torch.zeros(n, 2, L, L)
        for b, word, assistant, masks, _ in targets:
            row = torch.zeros(L)
            row[0] = 1.0
            for m in masks:
                row[IMAGE_START: IMAGE_START + GRID * GRID] += object_share * m.float() / m.sum()
            att[b, 0, word] = row / row.sum()
            att[b, 0, assistant, word] = 1.0
        return att

    target = pattern(1.0)
    before = torch.zeros(n, 2, L, L)
    for b, word, *_ in targets:
        before[b, 0, word, word - 1] = 1.0
    previous, retrieval, reading = attention_losses(before, target, target, targets, head=0)
    # the optimum of the retrieval loss is the entropy of "1/(k+1) each": mean log(k+1)
    entropy = sum(math.log(len(t[3]) + 1) for t in targets) / len(targets)
    assert previous.item() < 1e-4 and reading.item() < 1e-4
    assert abs(retrieval.item() - entropy) < 1e-4
    for share in (0.5, 2.0):  # too little / too much on the objects (a wrong count) costs more
        assert attention_losses(before, pattern(share), target, targets, head=0)[1].item() > entropy + 0.01
    uniform = torch.full((n, 2, L, L), 1.0 / L)
    previous, retrieval, reading = attention_losses(uniform, uniform, uniform, targets, head=0)
    assert previous.item() > 5.0 and retrieval.item() > entropy + 2.0 and reading.item() > 5.0
    # several retrieval heads: the loss averages them; head 1 of ``target`` is empty (all zeros)
    on_1 = attention_losses(before, target, target, targets, head=0, retrieval_heads=(1,))[1]
    assert on_1.item() > 10.0
    both = attention_losses(before, target, target, targets, head=0, retrieval_heads=(0, 1))[1]
    assert abs(both.item() - (entropy + on_1.item()) / 2) < 1e-4


def test_count_retrieval_loss_covers_count_questions_only():
    tok, samples, ids, targets = _training_batch(8)
    plural = set(tok.convert_tokens_to_ids(list(scenes.PLURAL.values())))
    counts = [t for t in targets if int(ids[t[0], t[1]]) in plural]
    assert 0 < len(counts) < len(targets)  # the batch mixes count and other questions
    n, L = len(samples), ids.shape[1]
    att = torch.zeros(n, 2, L, L)
    for b, word, _, masks, _ in counts:  # the ideal pattern on count questions, nothing elsewhere
        att[b, 1, word, 0] = 1.0
        for m in masks:
            att[b, 1, word, IMAGE_START: IMAGE_START + GRID * GRID] += m.float()
        att[b, 1, word] /= att[b, 1, word].sum()
    entropy = sum(math.log(len(t[3]) + 1) for t in counts) / len(counts)
    assert abs(count_retrieval_loss(att, ids, targets, 1, plural).item() - entropy) < 1e-4
    assert count_retrieval_loss(att, ids, targets, 0, plural).item() > 10.0  # head 0 looks nowhere
    no_counts = [t for t in targets if int(ids[t[0], t[1]]) not in plural]
    assert count_retrieval_loss(att, ids, no_counts, 1, plural) is None


def test_hop_facts_name_count_colour_and_place():
    objects = [scenes.Obj("circle", "red", x=20.0, y=100.0, r=12.0), scenes.Obj("circle", "blue", x=100.0, y=20.0, r=12.0),
               scenes.Obj("star", "green", x=60.0, y=61.0, r=12.0)]
    red, green = scenes.COLOR_NAMES.index("red"), scenes.COLOR_NAMES.index("green")
    assert hop_facts("how many circles are there ?", objects).tolist() == [2, -100, -100, -100]
    assert hop_facts("is the red circle on the left or the right ?", objects).tolist() == [1, red, 12, 2]
    assert hop_facts("what color is the star ?", objects).tolist() == [1, green, 7, 7]
    assert hop_facts("is there a purple star ?", objects).tolist() == [0, -100, -100, -100]


def test_hop_probe_reads_the_facts_at_the_two_hop_positions():
    proc = build_processor()
    samples = train_samples(1234, 3, 8, max_turns=5)
    batch, targets = make_batch(Encoder(proc.tokenizer), samples, 5)
    n, L, dim = len(samples), batch["input_ids"].shape[1], 48
    facts = torch.stack([t[4] for t in targets])
    assert (facts[:, 0] > 1).any() and (facts[:, 2] >= 0).any()  # counts > 1 and single-object places occur

    def states(at):
        """(n, L, dim) one background vector everywhere, plus the facts one-hot coded at the shape
        word or at <|assistant|>."""
        torch.manual_seed(0)
        x = torch.randn(dim).expand(n, L, dim).clone()
        for t, f in zip(targets, facts):
            code = torch.zeros(dim)
            for k, (v, offset) in enumerate(zip(f.tolist(), (0, 8, 15, 31))):
                if v >= 0:
                    code[offset + (v % 16 if k >= 2 else v)] = 3.0
            x[t[0], t[at]] += code
        return x

    def fitted_loss(word, answer):
        torch.manual_seed(0)
        probe = HopProbe(dim)
        opt = torch.optim.Adam(probe.parameters(), lr=0.05)
        for _ in range(150):
            loss = probe.loss(word, answer, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return probe.loss(word, answer, targets).item()

    assert fitted_loss(states(1), states(2)) < 0.05  # the facts sit where the probe looks: read out
    assert fitted_loss(states(2), states(1)) > 0.5  # swapped positions: the probe sees no facts


def test_eager_only_in_supervised_layers_matches_the_stock_model():
    proc = build_processor()
    model = build_model(seed=0, tokenizer=proc.tokenizer).eval()
    batch, _ = make_batch(Encoder(proc.tokenizer), train_samples(1234, 0, 2, max_turns=3), 3)
    with torch.no_grad():
        reference = model(**batch).logits
        restore = eager_attention_only_in(model, {1, 2})
        layers = model.model.language_model.layers
        kinds = [layer.self_attn.config._attn_implementation for layer in layers]
        assert kinds[1] == kinds[2] == "eager" and kinds.count("sdpa") == len(layers) - 2
        mixed = model(**batch).logits
        restore()
        assert model.config.text_config._attn_implementation == "sdpa"
        assert all(layer.self_attn.config is model.config.text_config for layer in layers)
    torch.testing.assert_close(mixed, reference, atol=1e-4, rtol=1e-4)


def test_aux_head_scores_patches_against_the_word_embeddings():
    proc = build_processor()
    model = build_model(seed=0, tokenizer=proc.tokenizer)
    aux = make_aux_head(model, proc.tokenizer)
    emb = model.get_input_embeddings().weight
    feats = torch.randn(2, GRID * GRID, emb.shape[1])
    z = aux.logits(feats)
    star = proc.tokenizer.convert_tokens_to_ids("star")
    k = 1 + scenes.SHAPES.index("star")
    assert torch.allclose(z[:, k], feats.flatten(0, 1) @ emb[star] + aux.bias[k], atol=1e-5)
    # the embedding stays owned by the model: the head adds no copy of it to an optimiser
    assert all(p is not emb for p in aux.parameters())


def test_sincos_position_init_makes_neighbours_similar():
    model = build_model(seed=0)
    init_position_embeddings(model, 0.3)
    pos = model.model.vision_tower.embeddings.position_embedding.weight
    cos = torch.nn.functional.cosine_similarity
    centre = 8 * GRID + 8
    assert cos(pos[centre], pos[centre + 1], dim=0) > cos(pos[centre], pos[0], dim=0) + 0.2


def test_two_step_run_saves_a_loadable_model_and_resumes(tmp_path):
    from transformers import AutoModelForImageTextToText

    out, ck = tmp_path / "model", tmp_path / "ckpt"
    args = ["--out", str(out), "--ckpt-dir", str(ck), "--vision-steps", "2", "--vision-batch-size", "2",
            "--steps", "2", "--batch-size", "2", "--val-every", "1000", "--threads", "1", "--ckpt-minutes", "0"]
    main(args)
    model = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True)
    assert model.config.model_type == "llava"
    saved = json.load(open(out / "training_args.json"))
    assert saved["steps"] == 2 and saved["resumed_from_step"] == 0
    assert os.path.exists(ck / "last.pt")
    # resuming a finished run skips both stages and saves the same weights
    main(args + ["--resume"])
    again = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True)
    assert json.load(open(out / "training_args.json"))["resumed_from_step"] == 2
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


def test_focus_samples_ask_only_the_focus_type_with_balanced_answers():
    batch = focus_samples(scenes.TRAIN_SEED, 2000, 16, 10, "count")
    assert {s.qtype for s in batch} == {"count"}
    answers = [s.answer for s in batch]
    assert sorted(set(answers)) == sorted(scenes.COUNT_WORDS[1:5])
    assert all(answers.count(a) == 4 for a in set(answers))
    for s in batch:  # the answer is right for the scene
        shape = next(sh for sh in scenes.SHAPES if scenes.PLURAL[sh] in s.question)
        assert scenes.COUNT_WORDS[sum(o.shape == shape for o in s.objects)] == s.answer
    again = focus_samples(scenes.TRAIN_SEED, 2000, 16, 10, "count")
    assert [s.question for s in again] == [s.question for s in batch]
    assert any(x[2] != "count" for s in batch for x in s.extra)  # other types still ride along as extra turns
    only = focus_samples(scenes.TRAIN_SEED, 2000, 16, 10, "count", only_focus_turns=True)
    assert [s.question for s in only] == [s.question for s in batch]
    assert all(x[2] == "count" for s in only for x in s.extra) and any(s.extra for s in only)


def test_focus_stage_resumes_exactly_from_the_stage2_checkpoint(tmp_path):
    from transformers import AutoModelForImageTextToText

    out, ck = tmp_path / "model", tmp_path / "ckpt"
    args = ["--out", str(out), "--ckpt-dir", str(ck), "--vision-steps", "1", "--vision-batch-size", "2",
            "--steps", "2", "--focus-steps", "2", "--batch-size", "2", "--val-every", "1000",
            "--threads", "1", "--ckpt-minutes", "1000"]
    main(args)
    straight = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True).state_dict()
    stage2 = torch.load(ck / "stage2.pt", weights_only=False)
    assert stage2["step"] == 2
    changed = sum(not torch.equal(a, stage2["model"][n]) for n, a in straight.items())
    assert changed > 0  # the focus steps did train
    os.replace(ck / "stage2.pt", ck / "last.pt")  # rerun stage 3 alone
    main(args + ["--resume"])
    assert json.load(open(out / "training_args.json"))["resumed_from_step"] == 2
    resumed = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True).state_dict()
    for n, a in straight.items():
        assert torch.equal(a, resumed[n]), n


def test_run_without_attention_losses_saves_a_loadable_model(tmp_path):
    """``--attn-weight 0`` keeps SDPA attention everywhere (nothing to restore) while the hop
    probe (default ``--probe-weight``) still hooks its two layers; the run must get through to
    the saved model (it used to end in an UnboundLocalError on ``restore_attention``)."""
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "model"
    main(["--out", str(out), "--ckpt-dir", str(tmp_path / "ckpt"), "--vision-steps", "1", "--vision-batch-size", "2",
          "--steps", "1", "--batch-size", "2", "--val-every", "1000", "--threads", "1", "--attn-weight", "0"])
    model = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True)
    assert model.config.model_type == "llava"
    saved = json.load(open(out / "training_args.json"))
    assert saved["attn_weight"] == 0 and saved["probe_weight"] > 0 and saved["steps"] == 1


def test_eager_attention_is_installed_only_for_the_attention_losses():
    proc = build_processor()
    model = build_model(seed=0, tokenizer=proc.tokenizer)
    kinds = lambda: {layer.self_attn.config._attn_implementation for layer in model.model.language_model.layers}  # noqa: E731
    hooks, restore = install_supervision_hooks(model, parse_args(["--attn-weight", "0"]), {})
    assert restore is None and kinds() == {"sdpa"}
    assert len(hooks) == 3  # the projector output and the hop probe's two layers
    for h in hooks:
        h.remove()
    hooks, restore = install_supervision_hooks(model, parse_args(["--count-layer", "0"]), {})
    assert callable(restore) and kinds() == {"eager", "sdpa"}
    assert len(hooks) == 1 + 4 + 2  # projector, four supervised attention layers, the probe's two
    restore()
    assert kinds() == {"sdpa"}


def test_checkpoint_folder_defaults_to_the_working_directory(monkeypatch):
    monkeypatch.delenv("SHAPES_CKPT_DIR", raising=False)
    assert parse_args([]).ckpt_dir == DEFAULT_CKPT_DIR == os.path.join("ckpt", "shapes")
    monkeypatch.setenv("SHAPES_CKPT_DIR", "/elsewhere/ckpt")
    assert parse_args([]).ckpt_dir == "/elsewhere/ckpt"
    assert parse_args(["--ckpt-dir", "mine"]).ckpt_dir == "mine"
