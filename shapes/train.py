"""Train the embedded Shapes model from scratch: ``python -m shapes.train``.

Reproduces ``assets/shapes-llava/``.  Everything is seeded: model init from ``--seed``,
training examples are generated on the fly from ``(--data-seed, example index)`` so a
run (and a ``--resume``d run) sees exactly the same data; nothing is stored on disk
except checkpoints (``--ckpt-dir``, every ``--ckpt-minutes``).

Each training sequence is one scene with 1-10 question/answer turns (multi-turn chat,
the image only in the first user turn, before the question).  The loss is on answer
tokens (+ their ``<|end|>``) only.  AdamW, linear warmup + cosine decay, all weights
(vision tower, projector, decoder) trained from scratch.

Two-stage curriculum (pure training aids; the shipped model is a stock LLaVA):

1. ``--vision-steps`` steps of dense patch supervision: the vision tower + projector
   predict, for each of the 256 patches, the shape and colour of the object covering it,
   whether it holds an object's centre, and its own row and column (``AuxHead``, thrown
   away after training).  The shape and colour logits are dot products with the decoder's
   embeddings of the shape and colour words, so patches and question words start out
   aligned.  This stage only runs the vision tower (~6x cheaper per image than the full
   model).  The vision position table starts from a 2-D sine-cosine code (``--pos-init``).
   Telling shapes apart needs the context of neighbouring patches (an 8 px patch inside
   a circle looks like one inside a square) and took the tower ~1,500 steps to find; the
   log prints the held-out object-shape accuracy of the probe every 100 steps.
2. ``--steps`` steps of full LLaVA training on the multi-turn QA sequences, keeping the
   patch loss with weight ``--aux-weight`` (on the projector output, via a hook), plus
   attention losses (weight ``--attn-weight``, one head each) and read-out losses (weight
   ``--probe-weight``) that spell out the hops every question needs:

   - ``--prev-layer``: the shape word attends to the word before it ("red circle");
   - ``--attn-layer``: the shape word ("star", "circles") attends to ``<s>`` and to each
     object it names with equal shares, so the share left on ``<s>`` codes the count and
     all of it on ``<s>`` codes "absent" (``attention_losses``);
   - ``--read-layer``: ``<|assistant|>`` (whose output is the answer) attends to that word;
   - ``--count-layer`` (the shipped model: 0): the plural word of a count question ("circles")
     learns the same retrieval pattern in an early layer, where its query is the word alone
     (``count_retrieval_loss``); the later retrieval head's shares were too noisy to count by;
   - after ``--attn-layer`` (at the shape word) and after ``--read-layer`` (at
     ``<|assistant|>``) a throw-away linear probe must read the count and the named
     object's colour, row and column (``HopProbe``).

   Without the attention losses the decoder sat at chance for 500+ steps even with perfect
   patch features.  With them but without the probe, colour and existence were learned but
   count and position stayed at chance for 2,000 steps: the heads looked at the right
   tokens, but nothing pushed their value/output projections to carry the count and place.
   Training runs eager attention in the supervised layers (the probabilities are needed)
   and SDPA elsewhere; the saved model uses SDPA everywhere.

Resuming (``--resume``) works in both stages.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.hooks import RemovableHandle

from . import drawn, scenes
from .model import NUM_VISION_TOKENS, build_model, build_processor

VAL_SEED = 55555  # small validation stream (neither the training nor the benchmark seed)
VISION_SEED_OFFSET = 100_000  # stage-1 scenes come from stream data_seed + this
DEFAULT_CKPT_DIR = os.path.join("ckpt", "shapes")  # relative to the working directory; $SHAPES_CKPT_DIR overrides
GRID = 16  # 16x16 patches of 8 px
PATCH = 8
PATCH_CENTRES = np.arange(GRID) * PATCH + (PATCH - 1) / 2  # pixel centre of each patch row / column


def centre_patch(obj) -> int:
    """Index (row-major, like the patch sequence) of the patch holding an object's centre."""
    return min(GRID - 1, int(obj.y // PATCH)) * GRID + min(GRID - 1, int(obj.x // PATCH))


def patch_labels(objects):
    """Per-patch (shape, colour, is-centre) labels; 0 = background (approximate masks)."""
    shape_l = np.zeros(GRID * GRID, dtype=np.int64)
    color_l = np.zeros(GRID * GRID, dtype=np.int64)
    centre = np.zeros(GRID * GRID, dtype=np.int64)
    xx, yy = np.meshgrid(PATCH_CENTRES, PATCH_CENTRES)  # row-major like the patch sequence
    xx, yy = xx.ravel(), yy.ravel()
    for o in objects:
        dx, dy = (xx - o.x) / o.sx, (yy - o.y) / o.sy  # a drawn picture's objects may be stretched
        if o.shape == "circle":
            inside = np.hypot(dx, dy) < 0.92 * o.r
        elif o.shape == "square":
            inside = np.maximum(abs(dx), abs(dy)) < 0.85 * o.r
        else:
            inside = np.hypot(dx, dy) < 0.55 * o.r
        shape_l[inside] = 1 + scenes.SHAPES.index(o.shape)
        color_l[inside] = 1 + scenes.COLOR_NAMES.index(o.color)
        centre[centre_patch(o)] = 1
    return shape_l, color_l, centre


class AuxHead(torch.nn.Module):
    """Throw-away patch probe on the projected patch features (training aid only).

    The shape and colour logits of a patch are dot products with the language model's own
    input embeddings of the words ``circle ... star`` and ``red ... white`` (plus a learned
    "background" vector), so a patch that shows a red star ends up pointing in the direction
    of the embeddings of ``red`` and ``star``: the question words and the patches they ask
    about start out aligned, which the decoder's attention can use from the first step.
    Centre-of-object and the patch's own row/column are plain linear outputs.
    """

    def __init__(self, dim, embedding: torch.nn.Embedding, shape_ids, color_ids):
        super().__init__()
        self.n_shape, self.n_color = 1 + len(shape_ids), 1 + len(color_ids)
        self.embedding = [embedding]  # a list: the embedding belongs to the model, not to this head
        self.register_buffer("shape_ids", torch.tensor(shape_ids), persistent=False)
        self.register_buffer("color_ids", torch.tensor(color_ids), persistent=False)
        self.background = torch.nn.Parameter(torch.zeros(2, dim))
        self.bias = torch.nn.Parameter(torch.zeros(self.n_shape + self.n_color))
        self.proj = torch.nn.Linear(dim, 2 + 2 * GRID)
        self.register_buffer("centre_w", torch.tensor([1.0, 8.0]))
        idx = torch.arange(GRID * GRID)
        self.register_buffer("row", idx // GRID, persistent=False)
        self.register_buffer("col", idx % GRID, persistent=False)

    def logits(self, feats):
        """(batch, 256, dim) -> (batch*256, n_shape + n_color + 2 + 2*GRID)."""
        emb = self.embedding[0].weight
        words = torch.cat([self.background[:1], emb[self.shape_ids], self.background[1:], emb[self.color_ids]])
        f = feats.flatten(0, 1)
        return torch.cat([f @ words.T + self.bias, self.proj(f)], dim=-1)

    def loss(self, feats, labels):
        shape_l, color_l, centre = labels
        z = self.logits(feats)
        a, b = self.n_shape, self.n_shape + self.n_color
        ce = torch.nn.functional.cross_entropy
        n = feats.shape[0]
        # the patch's own row / column: keeps absolute position linearly readable
        pos = (ce(z[:, b + 2: b + 2 + GRID], self.row.repeat(n))
               + ce(z[:, b + 2 + GRID:], self.col.repeat(n)))
        return (ce(z[:, :a], shape_l.flatten()) + ce(z[:, a:b], color_l.flatten())
                + ce(z[:, b: b + 2], centre.flatten(), weight=self.centre_w) + 0.5 * pos)

    @torch.no_grad()
    def object_shape_accuracy(self, feats, samples):
        """Share of objects whose centre patch is classified as the right shape."""
        z = self.logits(feats)[:, 1: self.n_shape].reshape(len(samples), GRID * GRID, -1)
        ok = total = 0
        for i, s in enumerate(samples):
            for o in s.objects:
                ok += int(z[i, centre_patch(o)].argmax().item() == scenes.SHAPES.index(o.shape))
                total += 1
        return ok / max(1, total)


def make_aux_head(model, tokenizer):
    ids = lambda words: tokenizer.convert_tokens_to_ids(list(words))  # noqa: E731
    return AuxHead(model.config.text_config.hidden_size, model.get_input_embeddings(),
                   ids(scenes.SHAPES), ids(scenes.COLOR_NAMES))


def init_position_embeddings(model, scale: float = 0.3) -> None:
    """2-D sine-cosine init of the SigLIP position table (as in MAE).  Neighbouring patches
    start with similar codes, so attention to an object's nearby patches (needed to tell a
    circle's interior from a square's) is learnable from the first step; with the default
    random init the tiny tower took far longer to find it."""
    emb = model.model.vision_tower.embeddings.position_embedding.weight
    dim = emb.shape[1]
    y, x = torch.meshgrid(torch.arange(GRID, dtype=torch.float32), torch.arange(GRID, dtype=torch.float32),
                          indexing="ij")
    q = dim // 4
    freq = 1.0 / (100.0 ** (torch.arange(q, dtype=torch.float32) / q))
    x, y = x.flatten()[:, None] * freq, y.flatten()[:, None] * freq
    with torch.no_grad():
        emb.copy_(scale * torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1))


def batch_patch_labels(samples, device):
    labs = [patch_labels(s.objects) for s in samples]
    return tuple(torch.from_numpy(np.stack([lab[k] for lab in labs])).to(device) for k in range(3))


def pixel_values_from_images(images) -> torch.Tensor:
    """Same resize and normalisation as the shipped SigLIP image processor (bicubic to 128x128,
    mean=std=0.5): drawn pictures (``shapes.drawn``) come in any size."""
    size = (scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)
    images = [im.convert("RGB") for im in images]
    images = [im if im.size == size else im.resize(size, Image.BICUBIC) for im in images]
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    arr = (arr / 255.0 - 0.5) / 0.5
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class Encoder:
    """Turns (questions, answers) into token ids + labels, matching the chat template."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        t = tokenizer.convert_tokens_to_ids
        self.bos, self.user, self.asst, self.end = t("<s>"), t("<|user|>"), t("<|assistant|>"), t("<|end|>")
        self.image = t("<image>")
        self.pad = tokenizer.pad_token_id
        self._cache = {}

    def words(self, text):
        if text not in self._cache:
            self._cache[text] = self.tok.encode(text, add_special_tokens=False)
        return self._cache[text]

    def encode(self, qa):
        """-> (ids, labels, [(position of the question's first word, position of its <|assistant|>)])."""
        ids, labels, starts = [self.bos], [-100], []
        for k, (q, a) in enumerate(qa):
            turn = [self.user] + ([self.image] * NUM_VISION_TOKENS if k == 0 else []) + self.words(q) + [self.end]
            starts.append((len(ids) + len(turn) - 1 - len(self.words(q)), len(ids) + len(turn)))
            ids += turn + [self.asst]
            labels += [-100] * (len(turn) + 1)
            ans = self.words(a) + [self.end]
            ids += ans
            labels += ans
        return ids, labels, starts


IMAGE_START = 2  # sequence position of the first image token: <s> <|user|> <image>*256 ...
_SHAPE_OF_WORD = {**{w: w for w in scenes.SHAPES}, **{p: s for s, p in scenes.PLURAL.items()}}


def object_patches(obj) -> np.ndarray:
    """Boolean (256,) mask of the patches an object covers (patch centre inside ~0.9 r)."""
    xx, yy = np.meshgrid(PATCH_CENTRES, PATCH_CENTRES)
    mask = (np.hypot(xx - obj.x, yy - obj.y) < 0.9 * obj.r).ravel()
    mask[centre_patch(obj)] = True
    return mask


def named_objects(question: str, objects):
    """(index of the shape word among the question's words, the objects it names), or None for
    a question without a shape word.  A colour word right before it narrows the match ("red circle")."""
    words = question.split()
    for i, w in enumerate(words):
        if w in _SHAPE_OF_WORD:
            color = words[i - 1] if i > 0 and words[i - 1] in scenes.COLORS else None
            return i, [o for o in objects if o.shape == _SHAPE_OF_WORD[w] and (color is None or o.color == color)]
    return None


def centre_mask(obj) -> np.ndarray:
    """Boolean (256,) mask of the one patch holding an object's centre."""
    mask = np.zeros(GRID * GRID, bool)
    mask[centre_patch(obj)] = True
    return mask


RETRIEVAL_MASKS = {"object": object_patches, "centre": centre_mask}


def retrieval_target(question: str, objects, where: str = "centre"):
    """(index of the shape word in the question's words, (k, 256) patch masks of the k objects
    it names; k = 0 when nothing in the scene matches), or None for a question without one.
    ``where``: ``"centre"`` masks each object's centre patch, ``"object"`` all its patches."""
    hit = named_objects(question, objects)
    if hit is None:
        return None
    masks = [RETRIEVAL_MASKS[where](o) for o in hit[1]]
    return hit[0], np.stack(masks) if masks else np.zeros((0, GRID * GRID), bool)


def hop_facts(question: str, objects) -> torch.Tensor:
    """What the two hops of ``question`` should carry, for ``HopProbe``: (4,) long tensor
    ``[count, colour, row, column]`` of the objects its shape word names (colour / row /
    column of the object's centre only when exactly one matches, else -100 = ignored)."""
    hits = named_objects(question, objects)[1]
    facts = [min(len(hits), HopProbe.MAX_COUNT), -100, -100, -100]
    if len(hits) == 1:
        row, col = divmod(centre_patch(hits[0]), GRID)
        facts[1:] = [scenes.COLOR_NAMES.index(hits[0].color), row, col]
    return torch.tensor(facts)


class HopProbe(torch.nn.Module):
    """Throw-away linear read-outs of the residual stream (training aid, like ``AuxHead``).

    After ``--attn-layer`` the question's shape word, and after ``--read-layer`` the
    ``<|assistant|>`` token, should hold what the answer needs: how many objects the words
    name, and the colour, row and column of the one object when a single one matches.
    Asking for that linearly, right where the attention losses route it, gives the value and
    output projections of those layers a direct gradient; through the answer loss alone the
    count and position answers stayed at chance for 2,000 steps (run 8).
    """

    MAX_COUNT = 7

    def __init__(self, dim: int):
        super().__init__()
        self.sizes = (self.MAX_COUNT + 1, len(scenes.COLOR_NAMES), GRID, GRID)
        self.word = torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, sum(self.sizes)))
        self.answer = torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, sum(self.sizes)))

    def loss(self, word_states: torch.Tensor, answer_states: torch.Tensor, targets) -> torch.Tensor:
        """``*_states``: (batch, seq, dim) outputs of the two layers; ``targets`` from ``make_batch``."""
        rows = torch.tensor([t[0] for t in targets])
        facts = torch.stack([t[4] for t in targets]).to(word_states.device)  # (n_questions, 4)
        total = 0.0
        for head, states, col in ((self.word, word_states, 1), (self.answer, answer_states, 2)):
            pos = torch.tensor([t[col] for t in targets])
            logits = head(states[rows, pos]).split(self.sizes, dim=-1)
            for k, z in enumerate(logits):
                if (facts[:, k] != -100).any():
                    total = total + torch.nn.functional.cross_entropy(z, facts[:, k], ignore_index=-100)
        return total


def make_batch(enc, samples, max_turns, retrieve: str = "centre"):
    """Padded batch of multi-turn sequences.  ``targets`` lists, for every question that names a
    shape, ``(row, position of the shape word, position of the turn's <|assistant|>, (k, 256)
    patch masks of the k objects the words name, their ``hop_facts``)`` for the attention losses
    (``attention_losses``) and the ``HopProbe``."""
    seqs, targets = [], []
    for b, s in enumerate(samples):
        qa = [(s.question, s.answer)] + [(q, a) for q, a, _ in s.extra][: max_turns - 1]
        ids, labels, starts = enc.encode(qa)
        seqs.append((ids, labels))
        for (q, _), (start, assistant) in zip(qa, starts):
            hit = retrieval_target(q, s.objects, retrieve)
            if hit is not None:
                targets.append((b, start + hit[0], assistant, torch.from_numpy(hit[1]),
                                hop_facts(q, s.objects)))
    L = max(len(i) for i, _ in seqs)
    ids = torch.full((len(seqs), L), enc.pad, dtype=torch.long)
    lab = torch.full((len(seqs), L), -100, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for b, (i, l) in enumerate(seqs):
        ids[b, : len(i)] = torch.tensor(i)
        lab[b, : len(l)] = torch.tensor(l)
        att[b, : len(i)] = 1
    return {"input_ids": ids, "attention_mask": att, "labels": lab,
            "pixel_values": pixel_values_from_images([s.image for s in samples])}, targets


def attention_losses(previous: torch.Tensor, retrieve: torch.Tensor, read: torch.Tensor, targets, head: int,
                     retrieval_heads: tuple[int, ...] | None = None):
    """The hops of a question, as attention targets for one head each (training aid).

    Each argument is a (batch, heads, seq, seq) tensor of attention probabilities.

    previous (``--prev-layer``): the shape word looks at the word before it, so a colour
        ("red circle") is in the shape word's hidden state before it looks for its objects.
    retrieve (``--attn-layer``): the shape word looks at <s> (position 0, a fixed "nothing"
        slot) and at each of the k objects the question names, with equal mass 1/(k+1) each
        (on the patches of its mask, ``--retrieve``; how an object's share spreads over them is
        free).  What the head reads then holds the count (the <s> share 1/(k+1)), existence
        (all mass on <s>: nothing matches), and the named objects' colour and place.
    read (``--read-layer``): the <|assistant|> token, whose output is the answer, looks at
        the shape word.
    ``retrieval_heads`` (default: ``(head,)``): the heads of ``--attn-layer`` that learn the
    retrieval pattern; several heads give several independent reads of the count.
    Every loss is a negative log-likelihood averaged over questions.  Returns the three."""
    rows = torch.tensor([t[0] for t in targets])
    word = torch.tensor([t[1] for t in targets])
    answer = torch.tensor([t[2] for t in targets])
    previous_loss = -torch.log(previous[rows, head, word, word - 1] + 1e-6).mean()
    reading = -torch.log(read[rows, head, answer, word] + 1e-6).mean()
    retrieval = []
    for h in (head,) if retrieval_heads is None else retrieval_heads:
        to_keys = retrieve[rows, h, word]  # (n_questions, seq)
        retrieval += [equal_shares_nll(to_keys[q], t[3]) for q, t in enumerate(targets)]
    return previous_loss, torch.stack(retrieval).mean(), reading


def equal_shares_nll(to_keys: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of one query's attention row ``to_keys`` (seq,) putting equal
    mass on <s> and on each of the k objects whose (k, 256) patch ``masks`` are given."""
    objects = to_keys[IMAGE_START: IMAGE_START + GRID * GRID] @ masks.to(to_keys).T  # (k,)
    groups = torch.cat([to_keys[:1], objects])  # <s>, then one entry per object
    return -torch.log(groups + 1e-6).mean()


def count_retrieval_loss(probs: torch.Tensor, input_ids: torch.Tensor, targets, head: int,
                         plural_ids: set[int]) -> torch.Tensor | None:
    """The retrieval pattern of ``attention_losses`` once more, for count questions only, in an
    early layer (``--count-layer``, probabilities ``probs`` (batch, heads, seq, seq)).

    A count question names a shape in the plural ("how many circles"), with no colour, so the
    plural word's own embedding already says what to look for: in layer 0 the query is the
    same for every count question about a shape and the keys are the projected patch features
    that stage 1 supervises.  The later retrieval layer's query and keys also carry the rest of
    the conversation and two layers of patch context, which made the per-object shares (the
    count code) vary by about +-45 %.  Returns None when the batch has no count question."""
    losses = [equal_shares_nll(probs[t[0], head, t[1]], t[3]) for t in targets
              if int(input_ids[t[0], t[1]]) in plural_ids]
    return torch.stack(losses).mean() if losses else None


def curriculum_cap(step, total, frac):
    """Max number of 'other' objects at ``step``: 0 at the start, +1 every ``frac*total/6``
    steps, no cap after ``frac * total`` steps."""
    if frac <= 0 or step >= frac * total:
        return None
    return int(6 * step / (frac * total))


def train_samples(data_seed, step, batch_size, max_turns, max_others=None, qtype=None, drawn_share=0.0):
    """The ``step``-th batch of the training stream: one scene per sample with 1..max_turns QA
    turns.  ``qtype`` (stage 3) makes every primary question of that type, answers balanced
    (``scenes.sample``); otherwise types go round-robin and ``max_others`` caps the scene.
    ``drawn_share`` of the scenes are drawn as in a paint program (``shapes.drawn``)."""
    out = []
    for j in range(batch_size):
        idx = step * batch_size + j
        rng = np.random.default_rng([int(data_seed), idx])
        n_extra = int(rng.integers(0, max_turns))  # 0 .. max_turns-1 extra turns
        out.append(drawn.training_sample(data_seed, idx, drawn_share, qtype=qtype, n_extra=n_extra,
                                         balanced=qtype is not None, max_others=max_others))
    return out


def focus_samples(data_seed, step, batch_size, max_turns, qtype, only_focus_turns=False, drawn_share=0.0):
    """Stage-3 batch: ``train_samples`` with every primary question of ``qtype`` (fresh scenes:
    the indices follow stage 2's).  ``only_focus_turns`` also drops the extra turns of other types."""
    out = train_samples(data_seed, step, batch_size, max_turns, qtype=qtype, drawn_share=drawn_share)
    if only_focus_turns:
        for s in out:
            s.extra = [x for x in s.extra if x[2] == qtype]
    return out


@torch.no_grad()
def quick_val(model, enc, val, device):
    """Teacher-forced first-answer-token accuracy per question type."""
    model.eval()
    correct, total = {}, {}
    for i in range(0, len(val), 32):
        chunk = val[i: i + 32]
        batch = {k: v.to(device) for k, v in make_batch(enc, chunk, 1)[0].items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits
        lab = batch["labels"]
        for b, s in enumerate(chunk):
            pos = (lab[b] != -100).nonzero()[0, 0].item()  # first answer token
            ok = int(logits[b, pos - 1].argmax().item() == lab[b, pos].item())
            correct[s.qtype] = correct.get(s.qtype, 0) + ok
            total[s.qtype] = total.get(s.qtype, 0) + 1
    model.train()
    acc = {t: correct[t] / total[t] for t in total}
    acc["all"] = sum(correct.values()) / sum(total.values())
    return acc


def lr_at(step, total, base, warmup, final_frac=0.05):
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def run_stage1(model, aux, captured, args, device, ckpt_path, opt) -> None:
    """Stage 1: patch supervision of the vision tower + projector (+ the shape/colour word
    embeddings the probe uses).  Resumable from ``ckpt_path`` (saved every --ckpt-minutes)."""
    t1 = last_ck = time.time()
    vparams = (list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
               + list(aux.parameters()) + [model.get_input_embeddings().weight])
    vopt = torch.optim.AdamW(param_groups(vparams, args.weight_decay), lr=args.vision_lr, betas=(0.9, 0.98))
    vstart, vema = 0, None
    stage1_path = ckpt_path.replace("last.pt", "stage1.pt")
    if args.resume and os.path.exists(stage1_path):
        vstart = load_checkpoint(stage1_path, model, aux, vopt, "vopt", "vstep", device)
        print(f"resumed stage 1 at step {vstart}", flush=True)
    held_out = [scenes.sample(VAL_SEED + 1, i, balanced=False) for i in range(64)]
    held_pix = pixel_values_from_images([s.image for s in held_out]).to(device)

    def shape_accuracy():
        model.eval()
        with torch.no_grad():
            model.model.get_image_features(held_pix, vision_feature_layer=-1, vision_feature_select_strategy="full")
        model.train()
        return aux.object_shape_accuracy(captured.pop("feats"), held_out)

    for vstep in range(vstart, args.vision_steps):
        for g in vopt.param_groups:
            g["lr"] = lr_at(vstep, args.vision_steps, args.vision_lr, 50)
        samples = [drawn.training_sample(args.data_seed + VISION_SEED_OFFSET, vstep * args.vision_batch_size + j,
                                         args.drawn_share, balanced=False) for j in range(args.vision_batch_size)]
        pix = pixel_values_from_images([s.image for s in samples]).to(device)
        model.model.get_image_features(pix, vision_feature_layer=-1, vision_feature_select_strategy="full")
        loss = aux.loss(captured.pop("feats"), batch_patch_labels(samples, device))
        vopt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vparams, 1.0)
        vopt.step()
        vema = loss.item() if vema is None else 0.95 * vema + 0.05 * loss.item()
        if (vstep + 1) % 100 == 0 or vstep + 1 == args.vision_steps:
            print(f"stage 1 step {vstep + 1}/{args.vision_steps} patch loss {vema:.4f} "
                  f"held-out object shape acc {shape_accuracy():.3f} "
                  f"elapsed {(time.time() - t1) / 60:.1f} min", flush=True)
        if time.time() - last_ck > args.ckpt_minutes * 60:
            save_checkpoint(stage1_path, model, aux, vopt=vopt.state_dict(), vstep=vstep + 1)
            last_ck = time.time()
    save_checkpoint(ckpt_path, model, aux, opt=opt.state_dict(), step=0, args=vars(args))
    print(f"stage 1 done in {(time.time() - t1) / 60:.1f} min", flush=True)


def eager_attention_only_in(model, layer_ids):
    """Run decoder layers ``layer_ids`` with eager attention (which returns the probabilities the
    attention losses need) and every other layer with SDPA (faster).  The model-level setting is
    eager, so the mask is built as an additive float mask, which both kernels accept.
    Returns a function that puts the model back on SDPA everywhere."""
    model.set_attn_implementation("eager")
    layers = model.model.language_model.layers
    shared = layers[0].self_attn.config
    fast = copy.copy(shared)
    fast._attn_implementation = "sdpa"
    for i, layer in enumerate(layers):
        if i not in layer_ids:
            layer.self_attn.config = fast

    def restore():
        for layer in layers:
            layer.self_attn.config = shared
        model.set_attn_implementation("sdpa")

    return restore


def save_checkpoint(path, model, aux, probe=None, **state) -> None:
    """Write model + probes + ``state`` (optimiser, step, ...) atomically (a .tmp file, then rename)."""
    probes = {"probe": probe.state_dict()} if probe is not None else {}
    torch.save({"model": model.state_dict(), "aux": aux.state_dict(), **probes, **state}, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path, model, aux, optimizer, opt_key, step_key, device, probe=None) -> int:
    """Restore model, probes and optimiser from ``path``; returns the step to continue from."""
    ck = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(ck["model"])
    aux.load_state_dict(ck["aux"])
    if probe is not None and "probe" in ck:
        probe.load_state_dict(ck["probe"])
    optimizer.load_state_dict(ck[opt_key])
    return ck[step_key]


def param_groups(params, weight_decay):
    """AdamW groups: decay matrices, not biases / norms / 1-D vectors."""
    params = list(params)
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def add_supervision_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of the stage-2/3 training aids: attention losses, hop probe, patch loss.

    Kept apart from ``build_arg_parser`` only so that each fits on a screen."""
    ap.add_argument("--aux-weight", type=float, default=0.5, help="patch loss weight in stage 2")
    ap.add_argument("--attn-weight", type=float, default=0.5,
                    help="weight of the two attention losses (0: off, sdpa attention in training)")
    ap.add_argument("--probe-weight", type=float, default=0.5,
                    help="weight of the HopProbe loss on the two hops' outputs (0: off)")
    ap.add_argument("--retrieve", choices=sorted(RETRIEVAL_MASKS), default="centre",
                    help="where the shape word's attention to each named object goes: its centre patch "
                         "(equal mass per object whatever its size, so the <s> share is the count) or all its patches")
    ap.add_argument("--attn-layer", type=int, default=2, help="decoder layer whose attention is supervised")
    ap.add_argument("--read-layer", type=int, default=4,
                    help="decoder layer where <|assistant|> is taught to read the question's shape word")
    ap.add_argument("--prev-layer", type=int, default=1,
                    help="decoder layer where the shape word is taught to read the word before it")
    ap.add_argument("--attn-head", type=int, default=0, help="head of both layers that is supervised")
    ap.add_argument("--count-layer", type=int, default=None,
                    help="also supervise the retrieval pattern of count questions in this (early) layer")
    ap.add_argument("--count-head", type=int, default=0, help="head of --count-layer that is supervised")
    ap.add_argument("--retrieval-heads", default=None, type=lambda text: tuple(int(h) for h in text.split(",")),
                    help="comma list of the --attn-layer heads that learn retrieval (default: --attn-head)")


def build_arg_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m shapes.train``.  Built per call, so the environment
    defaults (``SHAPES_CKPT_DIR``, ``SHAPES_THREADS``) are read when the command runs."""
    ap = argparse.ArgumentParser(description="Train the embedded Shapes LLaVA model.")
    ap.add_argument("--out", default=None, help="output folder (default: assets/shapes-llava)")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-turns", type=int, default=10, help="question/answer turns per scene (1..N)")
    ap.add_argument("--curriculum", type=float, default=0.5,
                    help="share of steps over which the number of extra objects grows from 0 to uncapped")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--vision-steps", type=int, default=3000, help="stage-1 patch-supervision steps")
    ap.add_argument("--vision-batch-size", type=int, default=32)
    ap.add_argument("--vision-lr", type=float, default=2e-3)
    add_supervision_arguments(ap)
    ap.add_argument("--pos-init", type=float, default=0.3,
                    help="scale of the 2-D sine-cosine init of the vision position table (0: random)")
    ap.add_argument("--focus-steps", type=int, default=0,
                    help="stage 3: this many more steps whose primary questions are all --focus-qtype")
    ap.add_argument("--focus-qtype", choices=scenes.QTYPES, default="count")
    ap.add_argument("--focus-lr", type=float, default=3e-4, help="stage-3 peak learning rate (cosine decay)")
    ap.add_argument("--focus-attn-weight", type=float, default=None, help="stage-3 --attn-weight (default: the same)")
    ap.add_argument("--focus-only", action="store_true", help="stage 3: extra turns of --focus-qtype only")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--drawn-share", type=float, default=0.0,
                    help="share of training scenes drawn as in a paint program (shapes.drawn); 0 = the generator's")
    ap.add_argument("--init-from", default=None,
                    help="start from this saved model's weights instead of a random init (fine-tuning; "
                         "stage 1 is skipped, the throw-away probes start fresh)")
    ap.add_argument("--seed", type=int, default=0, help="model init seed")
    ap.add_argument("--data-seed", type=int, default=scenes.TRAIN_SEED)
    ap.add_argument("--ckpt-dir", default=os.environ.get("SHAPES_CKPT_DIR", DEFAULT_CKPT_DIR),
                    help=f"checkpoint folder (default: $SHAPES_CKPT_DIR, else {DEFAULT_CKPT_DIR} "
                         "under the working directory)")
    ap.add_argument("--ckpt-minutes", type=float, default=4.0)
    ap.add_argument("--resume", action="store_true", help="resume from --ckpt-dir (stage1.pt during stage 1, last.pt after)")
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("SHAPES_THREADS", "2")))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bench-steps", type=int, default=0,
                    help="only time this many steps (throughput measurement), save nothing")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``argv``; ``None``: ``sys.argv``)."""
    return build_arg_parser().parse_args(argv)


@dataclass
class Training:
    """What stages 2 and 3 carry from step to step, built once by ``build_training``.

    ``captured`` is filled by ``hooks`` during each forward pass (projected patch features,
    attention probabilities of the supervised layers, the two hop layers' outputs) and
    emptied by ``step_loss``.  ``restore_attention`` is set only when eager attention was
    installed in the supervised layers (``--attn-weight`` > 0); ``None`` otherwise, so the
    hooks and the attention switch are undone independently (``remove_training_aids``)."""

    model: torch.nn.Module
    processor: Any
    encoder: Encoder
    aux: AuxHead
    probe: HopProbe
    optimizer: torch.optim.Optimizer
    plural_ids: set[int]
    captured: dict[str, Any] = field(default_factory=dict)
    hooks: list[RemovableHandle] = field(default_factory=list)
    restore_attention: Callable[[], None] | None = None

    def remove_training_aids(self) -> None:
        """Remove every capture hook, then put the model back on SDPA attention if it was
        switched to eager, so the saved model is the stock LLaVA."""
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        if self.restore_attention is not None:
            self.restore_attention()
            self.restore_attention = None


def build_training(args: argparse.Namespace, device: torch.device) -> Training:
    """Seeded model, processor, token encoder, the two throw-away probes (``AuxHead``,
    ``HopProbe``), the capture hooks and the AdamW optimiser over all of them.

    The order is part of the recipe: the model is built from ``--seed``, then the torch
    generator is reseeded with ``--seed + 1`` before the probes draw their initial weights."""
    processor = build_processor()
    tok = processor.tokenizer
    model = build_model(seed=args.seed, tokenizer=tok).to(device)
    model.train()
    torch.manual_seed(args.seed + 1)
    if args.init_from:
        model.load_state_dict(load_model_weights(args.init_from))
    elif args.pos_init > 0:
        init_position_embeddings(model, args.pos_init)
    aux = make_aux_head(model, tok).to(device)
    probe = HopProbe(model.config.text_config.hidden_size).to(device)
    trained = list(model.parameters()) + list(aux.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(param_groups(trained, args.weight_decay),
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    t = Training(model=model, processor=processor, encoder=Encoder(tok), aux=aux, probe=probe, optimizer=opt,
                 plural_ids=set(tok.convert_tokens_to_ids(list(scenes.PLURAL.values()))))
    t.hooks, t.restore_attention = install_supervision_hooks(model, args, t.captured)
    return t


def load_model_weights(model_dir: str) -> dict[str, torch.Tensor]:
    """The state dict of a saved Shapes model (``model.safetensors``), for ``--init-from``."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()


def install_supervision_hooks(model: torch.nn.Module, args: argparse.Namespace, captured: dict[str, Any]
                              ) -> tuple[list[RemovableHandle], Callable[[], None] | None]:
    """Hooks that copy what the training aids read into ``captured`` on every forward pass:
    the projector output (``feats``, for ``AuxHead``), with ``--attn-weight`` > 0 the attention
    probabilities of the supervised layers (``previous``, ``attn``, ``read``, ``count``), and
    with ``--probe-weight`` > 0 the outputs of ``--attn-layer`` / ``--read-layer``
    (``word_states`` / ``answer_states``, for ``HopProbe``).

    Returns (the hook handles, the function that undoes eager attention, or ``None`` when
    eager attention was not installed: with ``--attn-weight 0`` the model stays on SDPA)."""
    hooks = [model.model.multi_modal_projector.register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("feats", out))]
    restore_attention = None
    layers = model.model.language_model.layers
    if args.attn_weight > 0:  # eager attention returns the probabilities the attention losses need
        supervised = {"previous": args.prev_layer, "attn": args.attn_layer, "read": args.read_layer}
        if args.count_layer is not None:
            supervised["count"] = args.count_layer
        restore_attention = eager_attention_only_in(model, set(supervised.values()))
        for name, idx in supervised.items():
            hooks.append(layers[idx].self_attn.register_forward_hook(
                lambda mod, inp, out, name=name: captured.__setitem__(name, out[1])))
    if args.probe_weight > 0:
        for name, idx in (("word_states", args.attn_layer), ("answer_states", args.read_layer)):
            hooks.append(layers[idx].register_forward_hook(
                lambda mod, inp, out, name=name: captured.__setitem__(name, out)))
    return hooks, restore_attention


def resume_or_run_stage1(t: Training, args: argparse.Namespace, device: torch.device, ckpt_path: str) -> int:
    """With ``--resume`` and a ``last.pt``, restore it (stage 1 is then done); otherwise run
    stage 1 (unless ``--vision-steps 0`` or ``--bench-steps``).  Returns the first stage-2/3
    step to run."""
    os.makedirs(args.ckpt_dir, exist_ok=True)
    if args.resume and os.path.exists(ckpt_path):
        start = load_checkpoint(ckpt_path, t.model, t.aux, t.optimizer, "opt", "step", device, t.probe)
        print(f"resumed from {ckpt_path} at step {start}", flush=True)
        return start
    if args.vision_steps > 0 and not args.bench_steps and not args.init_from:
        run_stage1(t.model, t.aux, t.captured, args, device, ckpt_path, t.optimizer)
    return 0


def stage_batch(step: int, args: argparse.Namespace) -> tuple[list[scenes.Sample], float, float]:
    """(scenes, learning rate, attention-loss weight) of ``step``: stage 2 (the first
    ``--steps``: all question types, warmup + cosine, curriculum on the number of objects)
    or stage 3 (every primary question a ``--focus-qtype`` one, its own cosine schedule)."""
    if step < args.steps:
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        samples = train_samples(args.data_seed, step, args.batch_size, args.max_turns,
                                curriculum_cap(step, args.steps, args.curriculum), drawn_share=args.drawn_share)
        return samples, lr, args.attn_weight
    lr = lr_at(step - args.steps, args.focus_steps, args.focus_lr, args.focus_steps // 10)
    samples = focus_samples(args.data_seed, step, args.batch_size, args.max_turns, args.focus_qtype,
                            args.focus_only, args.drawn_share)
    attn_weight = args.attn_weight if args.focus_attn_weight is None else args.focus_attn_weight
    return samples, lr, attn_weight


def step_loss(t: Training, args: argparse.Namespace, samples: list[scenes.Sample], attn_weight: float,
              device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward pass on ``samples`` and the summed training loss: answer tokens, plus (each when
    switched on and the batch names a shape) the attention losses times ``attn_weight``, the
    count-retrieval loss, the hop-probe loss and the patch loss.  Returns (the loss, its
    unweighted parts by name, in the order the log prints them)."""
    batch, targets = make_batch(t.encoder, samples, args.max_turns, args.retrieve)
    loss = t.model(**{k: v.to(device) for k, v in batch.items()}).loss
    parts = {"answer": loss.item()}
    captured = t.captured
    if args.attn_weight > 0 and targets:  # --attn-weight switches it on; stage 3 may only reweigh it
        previous, retrieval, reading = attention_losses(
            captured.pop("previous"), captured.pop("attn"), captured.pop("read"), targets, args.attn_head,
            args.retrieval_heads)
        parts.update(previous=previous.item(), retrieval=retrieval.item(), reading=reading.item())
        loss = loss + attn_weight * (previous + retrieval + reading)
        if args.count_layer is not None:
            counting = count_retrieval_loss(captured.pop("count"), batch["input_ids"], targets,
                                            args.count_head, t.plural_ids)
            if counting is not None:
                parts["counting"] = counting.item()
                loss = loss + attn_weight * counting
    if args.probe_weight > 0 and targets:
        hops = t.probe.loss(captured.pop("word_states"), captured.pop("answer_states"), targets)
        parts["hops"] = hops.item()
        loss = loss + args.probe_weight * hops
    if args.aux_weight > 0:
        patch_loss = t.aux.loss(captured.pop("feats"), batch_patch_labels(samples, device))
        parts["patch"] = patch_loss.item()
        loss = loss + args.aux_weight * patch_loss
    captured.clear()  # whatever a loss did not use this step (e.g. no shape word in the batch)
    return loss, parts


def optimizer_step(t: Training, loss: torch.Tensor) -> None:
    """One AdamW update from ``loss`` (learning rate already set for the step), with the
    model's gradient norm clipped to 1 (the probes' gradients are not clipped)."""
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(t.model.parameters(), 1.0)
    t.optimizer.step()


def track(ema: dict[str, float], name: str, value: float) -> None:
    """Running mean (factor 0.98) of a loss part, for the log; the first value starts it."""
    ema[name] = value if name not in ema else 0.98 * ema[name] + 0.02 * value


def progress_bar(total: int, initial: int) -> Any:
    """A tqdm bar over the stage-2/3 steps, or ``None`` without tqdm (then ``log_step``
    prints every 10 steps instead of every 25)."""
    try:
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, mininterval=10, dynamic_ncols=False, ncols=100)
    except ImportError:  # pragma: no cover
        return None


def log_step(step: int, start: int, args: argparse.Namespace, ema: dict[str, float], bar: Any, lr: float,
             t0: float) -> None:
    """Advance the progress bar and, every 25 steps (10 without a bar), print the running
    means of the loss parts and the throughput since ``start`` (this process's first step)."""
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{ema['total']:.3f}", lr=f"{lr:.1e}", refresh=False)
    if (step + 1) % 25 == 0 or bar is None and (step + 1) % 10 == 0:
        el = time.time() - t0
        parts = " ".join(f"{k} {v:.4f}" for k, v in ema.items())
        print(f"\nstep {step + 1} loss {parts} {(step + 1 - start) * args.batch_size / el:.1f} scenes/s "
              f"elapsed {el / 60:.1f} min", flush=True)


def validate_and_checkpoint(step: int, t: Training, args: argparse.Namespace, val: list[scenes.Sample],
                            device: torch.device, ckpt_path: str, last_ck: float) -> float:
    """After ``step``: the quick validation every ``--val-every`` steps and at the end of each
    stage, ``stage2.pt`` at the end of stage 2 (when a stage 3 follows, so it can be rerun
    alone), and ``last.pt`` when ``--ckpt-minutes`` have passed since ``last_ck``.  Returns the
    time of the latest ``last.pt``."""
    if (step + 1) % args.val_every == 0 or step + 1 in (args.steps, args.steps + args.focus_steps):
        acc = quick_val(t.model, t.encoder, val, device)
        print(f"\nstep {step + 1} val " + " ".join(f"{k}={v:.3f}" for k, v in acc.items()), flush=True)
    if step + 1 == args.steps and args.focus_steps:
        save_checkpoint(os.path.join(args.ckpt_dir, "stage2.pt"), t.model, t.aux, t.probe,
                        opt=t.optimizer.state_dict(), step=step + 1, args=vars(args))
    if time.time() - last_ck > args.ckpt_minutes * 60:
        save_checkpoint(ckpt_path, t.model, t.aux, t.probe, opt=t.optimizer.state_dict(), step=step + 1,
                        args=vars(args))
        last_ck = time.time()
    return last_ck


def train_stages_2_and_3(t: Training, args: argparse.Namespace, device: torch.device, start: int,
                         ckpt_path: str) -> float:
    """Steps ``start`` .. ``--steps + --focus-steps`` (or ``--bench-steps`` steps, then no
    validation or checkpoints).  Returns the wall time of the loop in seconds."""
    val = [scenes.sample(VAL_SEED, i) for i in range(128)]
    n_params = sum(p.numel() for p in t.model.parameters())
    print(f"params {n_params / 1e6:.2f}M, steps {args.steps}, batch {args.batch_size}, "
          f"scenes {args.steps * args.batch_size}, device {device}, threads {args.threads}", flush=True)
    bar = progress_bar(args.steps + args.focus_steps, start)
    total_steps = args.bench_steps if args.bench_steps else args.steps + args.focus_steps
    t0 = last_ck = time.time()
    ema: dict[str, float] = {}  # running means of the loss parts, for the log
    for step in range(start, total_steps):
        samples, lr, attn_weight = stage_batch(step, args)
        for g in t.optimizer.param_groups:
            g["lr"] = lr
        loss, parts = step_loss(t, args, samples, attn_weight, device)
        for name, value in parts.items():
            track(ema, name, value)
        optimizer_step(t, loss)
        track(ema, "total", loss.item())
        log_step(step, start, args, ema, bar, lr, t0)
        if not args.bench_steps:
            last_ck = validate_and_checkpoint(step, t, args, val, device, ckpt_path, last_ck)
    if bar is not None:
        bar.close()
    wall = time.time() - t0
    print(f"training wall time {wall / 60:.1f} min", flush=True)
    return wall


def save_model(t: Training, args: argparse.Namespace, out_dir: str, wall: float, start: int) -> None:
    """Drop the training aids (hooks, eager attention) and save the stock LLaVA model, its
    generation config and processor to ``out_dir``, with ``training_args.json`` recording the
    options (less the machine-specific ones), this process's wall time and the resume step."""
    t.remove_training_aids()
    t.model.eval()
    os.makedirs(out_dir, exist_ok=True)
    t.model.save_pretrained(out_dir)
    t.model.generation_config.save_pretrained(out_dir)
    t.processor.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "training_args.json"), "w") as f:
        json.dump({**{k: v for k, v in vars(args).items() if k not in ("resume", "device", "ckpt_dir")},
                   "wall_minutes_this_process": round(wall / 60, 1), "resumed_from_step": start}, f, indent=1)
    print(f"saved model + processor to {out_dir}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m shapes.train``: stage 1 (or resume), stages 2 and 3, then save the model."""
    args = parse_args(argv)
    from .model import DEFAULT_MODEL_DIR

    out_dir = args.out or DEFAULT_MODEL_DIR
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t = build_training(args, device)
    ckpt_path = os.path.join(args.ckpt_dir, "last.pt")
    start = resume_or_run_stage1(t, args, device, ckpt_path)
    wall = train_stages_2_and_3(t, args, device, start, ckpt_path)
    if args.bench_steps:
        return
    save_model(t, args, out_dir, wall, start)


if __name__ == "__main__":
    main()
