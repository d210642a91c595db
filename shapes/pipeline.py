"""Train a Shapes model the way real LVLMs are trained: ``python -m shapes.pipeline``.

``shapes.train`` wires its model with training aids that real LVLMs never get (attention
losses on chosen heads, read-out probes).  This recipe has none in the language-model
stages; it follows the LLaVA pipeline, scaled down:

1. ``vision``: the vision tower is pretrained on its own, as CLIP/SigLIP towers are, on dense
   patch labels (shape, colour, object centre, row and column of every patch) through a
   throw-away linear probe with its own label vectors.  It never sees the language model.
2. ``text``: the language model is pretrained on text alone, in the generator's language:
   a scene's dense caption followed by questions about it and their answers
   ("a large red circle at the top left , ... . how many circles are there ? one . ...").
   Plain next-token loss on every token.
3. ``align``: projector alignment.  Vision tower and language model frozen, the projector
   learns to turn patches into what the language model reads, from dense captions
   ("<image> describe the image ." -> the caption).
4. ``instruct``: instruction tuning on multi-turn question/answer chats (1-10 turns per
   scene, loss on the answers and their end token); projector and language model train,
   the vision tower stays frozen (as in LLaVA-1.5).

``--text-format cells`` (issue 28) changes what the text and alignment stages read, not what they
are: the text documents open with the scene written as 256 cell words, one per vision token in
raster order (``shapes.cells``), so that the language model needs lookups over a 256-token prefix
to answer the questions that follow; alignment gives it the same documents with the picture in
the cells' place (still projector only unless ``--align-lm-layers``).  ``--cell-init compose``,
``--text-curriculum``, ``--cell-curriculum`` and ``--cell-words`` are the variants tried
(``shapes/README.md``); ``shapes.lookups`` measures where the text stage's model looks.
``--question-mix balanced`` asks a scene's four question types in turn in every stage's documents
and chats, instead of as often as a scene has them.
``--text-format cell-chats`` writes the same cells and questions in the chat template that
alignment, instruction tuning and the app use (``<|user|>`` cells, question ``<|end|>``
``<|assistant|>`` answer ``<|end|>`` ...), loss on the answers: a text-only chat model, as LLaVA
starts from Vicuna rather than from a base model.

Every stage draws a ``--drawn-share`` of its scenes the way people draw them
(``shapes.drawn``: flat canvases, paint colours, any aspect ratio, with or without
anti-aliasing).  Resumable (``--resume``) at any step of any stage from ``--ckpt-dir``;
uses CUDA when present.  The result is a stock ``LlavaForConditionalGeneration``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import cells, drawn, scenes
from .model import NUM_VISION_TOKENS, build_model, build_processor
from .train import (IMAGE_START, VAL_SEED, AuxHead, Encoder, batch_patch_labels, curriculum_cap,
                    init_position_embeddings, lr_at, make_batch, param_groups, pixel_values_from_images, quick_val)

STAGES = ("vision", "text", "align", "instruct")
STREAM_OFFSETS = {"vision": 100_000, "text": 200_000, "align": 300_000, "instruct": 0}  # + --data-seed
DESCRIBE = "describe the image ."
TEXT_FORMATS = ("caption", "cells", "cell-chats")
QUESTION_MIXES = ("natural", "balanced")
ALL_QUESTIONS = 64  # more than any scene has to ask: ``n_extra`` that returns every derived question
DEFAULT_CKPT_DIR = os.path.join("ckpt", "pipeline")


@dataclass
class Stage:
    """One stage's schedule: steps, scenes per step, peak learning rate, warm-up steps."""

    name: str
    steps: int
    batch_size: int
    lr: float
    warmup: int


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(DEFAULT_CKPT_DIR, "model"), help="where the model is saved")
    ap.add_argument("--ckpt-dir", default=os.environ.get("SHAPES_PIPELINE_CKPT_DIR", DEFAULT_CKPT_DIR))
    ap.add_argument("--resume", action="store_true", help="continue from --ckpt-dir/state.pt")
    ap.add_argument("--init-from", metavar="STAGE_PT",
                    help="start from a saved stage's weights (e.g. a committed text.pt) at --start-stage, "
                         "skipping the stages before it (a recipe split into stages; --resume wins if state.pt exists)")
    ap.add_argument("--start-stage", choices=STAGES, default="text", help="with --init-from: the first stage to run")
    for name, steps, batch, lr, warmup in (("vision", 2000, 32, 2e-3, 50), ("text", 600, 32, 1.5e-3, 50),
                                           ("align", 400, 16, 2e-3, 30), ("instruct", 2000, 16, 1e-3, 100)):
        ap.add_argument(f"--{name}-steps", type=int, default=steps)
        ap.add_argument(f"--{name}-batch-size", type=int, default=batch)
        ap.add_argument(f"--{name}-lr", type=float, default=lr)
        ap.add_argument(f"--{name}-warmup", type=int, default=warmup)
    ap.add_argument("--text-format", choices=TEXT_FORMATS, default="caption",
                    help="caption: text documents open with the scene's dense caption and alignment captions "
                         "pictures; cells: documents open with the scene as 256 cell words (shapes.cells) "
                         "and alignment answers the same questions with the picture in the cells' place; "
                         "cell-chats: the same cells and questions as chats in the app's chat template")
    ap.add_argument("--cell-init", choices=("random", "compose"), default="random",
                    help="cells: start each cell word's embedding at the sum of its parts' (red_star_tl = red + "
                         "star + top + left), as new tokens are often initialised from the words they join")
    ap.add_argument("--cell-words", choices=cells.LANGUAGES, default="centres",
                    help="cells: where a cell word writes its half (shapes.cells): centres: on each object's "
                         "centre patch (red_circle_tl), the other patches plain; halves: on every object patch, "
                         "its own half, and the centre plain (red_circle)")
    ap.add_argument("--text-curriculum", type=float, default=0.0,
                    help="text: share of the steps during which the objects besides the asked ones are capped "
                         "(0 at first, growing to 5; 0: no curriculum)")
    ap.add_argument("--cell-curriculum", type=float, default=0.0,
                    help="cells, text: share of the steps during which only part of the background cells is "
                         "written (none at first, all at the end of that share), so the prefix grows from the "
                         "object cells to all 256 (0: always all 256)")
    ap.add_argument("--align-lm-layers", type=int, default=0,
                    help="align: also train the language model's first this many decoder layers (0: projector only)")
    ap.add_argument("--align-lm-lr", type=float, default=None,
                    help="align: peak learning rate of those decoder layers (default: --align-lr, the projector's)")
    ap.add_argument("--instruct-vision-lr", type=float, default=None,
                    help="instruct: also train the vision tower, at this peak learning rate (default: frozen, "
                         "as in LLaVA-1.5; LLaVA-OneVision trains it at a fifth of the language model's rate)")
    ap.add_argument("--text-turns", type=int, default=None,
                    help="text: questions per document, at most (default: --max-turns; a scene has ~18 on average)")
    ap.add_argument("--max-turns", type=int, default=10, help="question/answer turns per instruction chat")
    ap.add_argument("--question-mix", choices=QUESTION_MIXES, default="natural",
                    help="which of a scene's questions a document or chat asks after its first: natural: a random "
                         "draw (exist 44 %%, position 31 %%, count 16 %%, colour 9 %% of them, as a scene has them "
                         "to ask); balanced: the four types in turn, as far as the scene has them")
    ap.add_argument("--curriculum", type=float, default=0.5,
                    help="instruct: share of the steps during which the objects besides the asked ones are capped")
    ap.add_argument("--drawn-share", type=float, default=0.5, help="share of scenes drawn as in a paint program")
    ap.add_argument("--pos-init", type=float, default=0.3, help="2-D sine-cosine init scale of the vision positions")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0, help="model init seed")
    ap.add_argument("--data-seed", type=int, default=scenes.TRAIN_SEED)
    ap.add_argument("--ckpt-minutes", type=float, default=4.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--val-every", type=int, default=250, help="instruct: validation every this many steps")
    ap.add_argument("--val-size", type=int, default=128, help="questions per validation set (generator, drawn)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("SHAPES_THREADS", "2")))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--picture-gain", metavar="STAGE_PT",
                    help="only measure a saved stage (e.g. ckpt/pipeline/align.pt): held-out caption loss with "
                         "each scene's own picture and with another scene's, then exit")
    ap.add_argument("--cell-readout", metavar="STAGE_PT",
                    help="cells: only measure a saved stage (e.g. ckpt/cellsg/align.pt): the share of held-out "
                         "patches that the projector brings nearest their own cell word, then exit")
    return ap


def stages_from(args: argparse.Namespace) -> list[Stage]:
    return [Stage(n, getattr(args, f"{n}_steps"), getattr(args, f"{n}_batch_size"), getattr(args, f"{n}_lr"),
                  getattr(args, f"{n}_warmup")) for n in STAGES]


class Pipeline:
    """The model, the vision probe and what each stage trains; ``batch_loss`` per stage."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.cells = args.text_format in ("cells", "cell-chats")
        self.chats = args.text_format == "cell-chats"
        self.processor = build_processor(extra_words=cells.CELL_WORDS if self.cells else ())
        self.encoder = Encoder(self.processor.tokenizer)
        self.model = build_model(seed=args.seed, tokenizer=self.processor.tokenizer).to(device)
        torch.manual_seed(args.seed + 1)
        if args.pos_init > 0:
            init_position_embeddings(self.model, args.pos_init)
        if self.cells and args.cell_init == "compose":
            cells.compose_embeddings(self.model.get_input_embeddings(), self.processor.tokenizer)
        width = self.model.config.vision_config.hidden_size
        n_shape, n_colour = len(scenes.SHAPES), len(scenes.COLOR_NAMES)
        self.label_vectors = torch.nn.Embedding(n_shape + n_colour, width).to(device)
        torch.nn.init.normal_(self.label_vectors.weight, std=0.02)  # as the decoder's own embeddings start
        self.probe = AuxHead(width, self.label_vectors, list(range(n_shape)),
                             list(range(n_shape, n_shape + n_colour))).to(device)

    def trained_parameters(self, stage: str) -> list[torch.nn.Parameter]:
        """What ``stage`` trains; everything else is frozen for it."""
        m = self.model.model
        if stage == "vision":
            return (list(m.vision_tower.parameters()) + list(self.probe.parameters())
                    + list(self.label_vectors.parameters()))
        if stage == "text":
            return list(m.language_model.parameters())  # the output head is tied to the input embeddings
        chat = list(m.multi_modal_projector.parameters()) + self.slow_parameters(stage)[0]
        return chat if stage == "align" else chat + list(m.language_model.parameters())

    def slow_parameters(self, stage: str) -> tuple[list[torch.nn.Parameter], float]:
        """The pretrained weights a chat stage trains at a rate of their own, and that rate: in
        ``align`` the first ``--align-lm-layers`` decoder layers (``--align-lm-lr``), in ``instruct``
        the vision tower when ``--instruct-vision-lr`` is set (frozen otherwise, as in LLaVA-1.5)."""
        m, a = self.model.model, self.args
        if stage == "align":
            layers = m.language_model.layers[: a.align_lm_layers]
            return [p for layer in layers for p in layer.parameters()], a.align_lm_lr or a.align_lr
        if stage == "instruct" and a.instruct_vision_lr:
            return list(m.vision_tower.parameters()), a.instruct_vision_lr
        return [], 0.0

    def optimizer_groups(self, stage: str, params: list[torch.nn.Parameter]) -> list[dict]:
        """AdamW groups of ``params``; the slow ones (``slow_parameters``) carry ``lr_scale``, their
        rate over the stage's, so that pretrained weights can move more slowly than the new projector."""
        slow, slow_lr = self.slow_parameters(stage)
        slow_ids = {id(p) for p in slow}
        groups = param_groups([p for p in params if id(p) not in slow_ids], self.args.weight_decay)
        for group in param_groups([p for p in params if id(p) in slow_ids], self.args.weight_decay):
            groups.append({**group, "lr_scale": slow_lr / getattr(self.args, f"{stage}_lr")})
        return [g for g in groups if g["params"]]

    def freeze_all_but(self, params: list[torch.nn.Parameter]) -> None:
        keep = {id(p) for p in params}
        for p in list(self.model.parameters()) + list(self.probe.parameters()) + list(self.label_vectors.parameters()):
            p.requires_grad_(id(p) in keep)

    def scenes_for(self, stage: str, step: int, batch_size: int, n_extra: int = 0, **kwargs) -> list[scenes.Sample]:
        seed = self.args.data_seed + STREAM_OFFSETS[stage]
        share = 0.0 if stage == "text" else self.args.drawn_share  # text needs no picture
        return [self.training_sample(seed, step * batch_size + j, share, n_extra, balanced=False, **kwargs)
                for j in range(batch_size)]

    def training_sample(self, seed: int, index: int, share: float, n_extra: int, **kwargs) -> scenes.Sample:
        """``drawn.training_sample`` with ``n_extra`` more questions, drawn as ``--question-mix`` says."""
        if self.args.question_mix == "natural" or n_extra == 0:
            return drawn.training_sample(seed, index, share, n_extra=n_extra, **kwargs)
        sample = drawn.training_sample(seed, index, share, n_extra=ALL_QUESTIONS, **kwargs)
        sample.extra = balanced_questions(sample.extra, n_extra)
        return sample

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, 256, width): the tower's output the LLaVA projector reads (``vision_feature_layer=-1``)."""
        out = self.model.model.vision_tower(pixel_values.to(self.device), output_hidden_states=True)
        return out.hidden_states[-1]

    def batch_loss(self, stage: str, step: int, batch_size: int) -> torch.Tensor:
        return {"vision": self.vision_loss, "text": self.text_loss, "align": self.align_loss,
                "instruct": self.instruct_loss}[stage](step, batch_size)

    def vision_loss(self, step: int, batch_size: int) -> torch.Tensor:
        samples = self.scenes_for("vision", step, batch_size)
        feats = self.vision_features(pixel_values_from_images([s.image for s in samples]))
        return self.probe.loss(feats, batch_patch_labels(samples, self.device))

    def text_loss(self, step: int, batch_size: int) -> torch.Tensor:
        cap = curriculum_cap(step, self.args.text_steps, self.args.text_curriculum)
        turns = self.args.max_turns if self.args.text_turns is None else self.args.text_turns
        samples = self.scenes_for("text", step, batch_size, n_extra=turns, max_others=cap)
        if self.cells:
            share = background_share(step, self.args.text_steps, self.args.cell_curriculum)
            prefixes = [self.cell_ids(s, share, (self.args.data_seed, step, j)) for j, s in enumerate(samples)]
            ids, attention, labels = (self.chats_with(samples, prefixes) if self.chats
                                      else self.documents(samples, prefixes))
        else:
            rows = [[self.encoder.bos] + self.token_ids(text_document(s)) + [self.encoder.tok.eos_token_id]
                    for s in samples]
            ids, attention = pad(rows, self.encoder.pad)
            labels = ids.masked_fill(attention == 0, -100)
        lm = self.model.model.language_model
        hidden = lm(input_ids=ids.to(self.device), attention_mask=attention.to(self.device)).last_hidden_state
        logits = self.model.lm_head(hidden)
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().to(self.device),
                                                 ignore_index=-100)

    def token_ids(self, text: str) -> list[int]:
        """A document's token ids (not through ``Encoder.words``' cache: every document is new)."""
        return self.encoder.tok.encode(text, add_special_tokens=False)

    @property
    def align_turns(self) -> dict[str, int]:
        """The extra questions an alignment scene carries: cell documents ask them all, captions none."""
        return {"n_extra": self.args.max_turns} if self.cells else {}

    def cell_ids(self, sample: scenes.Sample, background_share: float = 1.0, seed: tuple = ()) -> list[int]:
        """The sample's cell words as ids; with ``background_share`` < 1 only that share of the
        background cells (drawn from ``seed``) stays in the prefix (``--cell-curriculum``)."""
        words = cells.cell_words(sample.objects, self.args.cell_words)
        if background_share < 1.0:
            keep = np.random.default_rng(list(seed)).random(len(words)) < background_share
            words = [w for w, k in zip(words, keep) if k or w != cells.BACKGROUND]
        return self.encoder.tok.convert_tokens_to_ids(words)

    def documents(self, samples: list[scenes.Sample], prefixes: list[list[int]]):
        """Cell-format documents: ``<s>``, a 256-token prefix (cell words or ``<image>`` tokens),
        the questions and answers, the end token.  -> (ids, attention, labels); the loss covers
        the text after the prefix."""
        rows = [[self.encoder.bos] + p + self.token_ids(qa_text(s)) + [self.encoder.tok.eos_token_id]
                for s, p in zip(samples, prefixes)]
        ids, attention = pad(rows, self.encoder.pad)
        labels = ids.masked_fill(attention == 0, -100)
        for row, prefix in enumerate(prefixes):
            labels[row, : 1 + len(prefix)] = -100
        return ids, attention, labels

    def chats_with(self, samples: list[scenes.Sample], prefixes: list[list[int]]):
        """Cell-chat documents: each sample's questions as a chat (``Encoder.encode``, every turn)
        with ``prefix`` in the image tokens' place.  -> (ids, attention, labels); loss on the answers."""
        rows, label_rows, end = [], [], IMAGE_START + NUM_VISION_TOKENS
        for s, prefix in zip(samples, prefixes):
            ids, labels, _ = self.encoder.encode(qa_turns(s))
            rows.append(ids[:IMAGE_START] + prefix + ids[end:])
            label_rows.append(labels[:IMAGE_START] + [-100] * len(prefix) + labels[end:])
        ids, attention = pad(rows, self.encoder.pad)
        labels, _ = pad(label_rows, -100)
        return ids, attention, labels

    def query_row(self, prefix: list[int], question: str) -> list[int]:
        """A held-out query up to where its first answer word comes, in this format."""
        if self.chats:
            e = self.encoder
            return [e.bos, e.user] + prefix + e.words(question) + [e.end, e.asst]
        return [self.encoder.bos] + prefix + self.encoder.words(question)

    def align_batch(self, samples: list[scenes.Sample]) -> dict[str, torch.Tensor]:
        """One alignment batch: captioning chats, or (cells) documents with the picture in the cells'
        place, or (cell-chats) the same chats with the picture."""
        if not self.cells:
            batch, _ = make_batch(self.encoder, as_captioning(samples), 1)
            return batch
        if self.chats:
            batch, _ = make_batch(self.encoder, samples, self.args.max_turns + 1)
            return batch
        ids, attention, labels = self.documents(samples, [[self.encoder.image] * NUM_VISION_TOKENS] * len(samples))
        return {"input_ids": ids, "attention_mask": attention, "labels": labels,
                "pixel_values": pixel_values_from_images([s.image for s in samples])}

    def align_loss(self, step: int, batch_size: int) -> torch.Tensor:
        batch = self.align_batch(self.scenes_for("align", step, batch_size, **self.align_turns))
        return self.model(**{k: v.to(self.device) for k, v in batch.items()}).loss

    def instruct_loss(self, step: int, batch_size: int) -> torch.Tensor:
        cap = curriculum_cap(step, self.args.instruct_steps, self.args.curriculum)
        samples = []
        for j in range(batch_size):
            index = step * batch_size + j
            turns = int(np.random.default_rng([self.args.data_seed, index]).integers(0, self.args.max_turns))
            samples.append(self.training_sample(self.args.data_seed, index, self.args.drawn_share, turns,
                                                max_others=cap))
        return self.chat_loss(samples)

    def chat_loss(self, samples: list[scenes.Sample]) -> torch.Tensor:
        batch, _ = make_batch(self.encoder, samples, self.args.max_turns)
        return self.model(**{k: v.to(self.device) for k, v in batch.items()}).loss


def background_share(step: int, total: int, frac: float) -> float:
    """The share of background cells written at ``step`` of ``total`` under ``--cell-curriculum frac``:
    0 at the start, growing linearly to 1 at ``frac * total`` steps, 1 after."""
    return 1.0 if frac <= 0 else min(1.0, step / (frac * total))


def as_captioning(samples: list[scenes.Sample]) -> list[scenes.Sample]:
    """The samples as one-turn captioning chats: "describe the image ." -> the dense caption."""
    for s in samples:
        s.question, s.answer, s.extra = DESCRIBE, scenes.caption(s.objects), []
    return samples


def balanced_questions(extra: list[tuple[str, str, str]], n: int) -> list[tuple[str, str, str]]:
    """``n`` of ``extra`` (question, answer, type), the types taken in turn (colour, count, position,
    exist, colour, ...) and a type skipped once it has no question left; kept in ``extra``'s own
    (random) order.  A scene has few colour questions (one per shape it holds once) and many exist
    ones, so a random draw teaches colour least, though the benchmarks ask each type equally."""
    queues = {t: [i for i, (_, _, kind) in enumerate(extra) if kind == t] for t in scenes.QTYPES}
    chosen: list[int] = []
    while len(chosen) < n and any(queues.values()):
        for t in scenes.QTYPES:
            if queues[t] and len(chosen) < n:
                chosen.append(queues[t].pop(0))
    return [extra[i] for i in sorted(chosen)]


def qa_turns(sample: scenes.Sample) -> list[tuple[str, str]]:
    """The sample's (question, answer) turns: its own question first, then every extra one."""
    return [(sample.question, sample.answer)] + [(q, a) for q, a, _ in sample.extra]


def qa_text(sample: scenes.Sample) -> str:
    """The sample's questions with their answers, as a text document goes on after the scene."""
    return " ".join(f"{q} {a} ." for q, a in qa_turns(sample))


def text_document(sample: scenes.Sample) -> str:
    """A text-only training document: the scene's caption, then its questions with their answers."""
    return scenes.caption(sample.objects) + " " + qa_text(sample)


def pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention mask) of token rows."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        attention[i, : len(r)] = 1
    return ids, attention


class Progress:
    """Checkpoints (``state.pt``: the stage, its next step, every weight and the optimiser) and
    the per-stage wall minutes, which survive a ``--resume``."""

    def __init__(self, pipe: Pipeline, ckpt_dir: str, every_minutes: float):
        self.pipe, self.path, self.every = pipe, os.path.join(ckpt_dir, "state.pt"), every_minutes * 60
        os.makedirs(ckpt_dir, exist_ok=True)
        self.stage, self.step, self.minutes, self.saved_at = STAGES[0], 0, {}, time.time()
        self.optimizer_state: dict | None = None

    def restore(self) -> None:
        ck = torch.load(self.path, map_location=self.pipe.device, weights_only=False)
        self.pipe.model.load_state_dict(ck["model"])
        self.pipe.probe.load_state_dict(ck["probe"])
        self.pipe.label_vectors.load_state_dict(ck["label_vectors"])
        self.stage, self.step, self.minutes = ck["stage"], ck["step"], ck["minutes"]
        self.optimizer_state = ck["opt"]
        print(f"resumed at {self.stage} step {self.step}", flush=True)

    def start_from(self, stage_pt: str, stage: str) -> None:
        """Load a saved stage's weights and begin at ``stage``, step 0 (the stages before it count as done)."""
        self.pipe.model.load_state_dict(torch.load(stage_pt, map_location=self.pipe.device)["model"])
        self.stage, self.step = stage, 0
        print(f"weights from {stage_pt}; starting at stage {stage}", flush=True)

    def save(self, stage: str, step: int, optimizer: torch.optim.Optimizer, force: bool = False) -> None:
        if not force and time.time() - self.saved_at < self.every:
            return
        p = self.pipe
        torch.save({"stage": stage, "step": step, "minutes": self.minutes, "model": p.model.state_dict(),
                    "probe": p.probe.state_dict(), "label_vectors": p.label_vectors.state_dict(),
                    "opt": optimizer.state_dict()}, self.path + ".tmp")
        os.replace(self.path + ".tmp", self.path)
        self.saved_at = time.time()

    def start_of(self, stage: str) -> int | None:
        """The first step of ``stage`` still to run, or ``None`` when it is already done."""
        done, current = STAGES.index(stage), STAGES.index(self.stage)
        return None if done < current else (self.step if done == current else 0)


def stage_report(pipe: Pipeline, stage: str) -> str:
    """What a stage's log line adds to its loss: the vision probe's held-out object-shape accuracy
    (generator and drawn scenes) or, in the chat stages, teacher-forced answer accuracy."""
    n = pipe.args.val_size
    if stage == "vision":
        parts = []
        for name, held_out in (("generator", [scenes.sample(VAL_SEED + 1, i, balanced=False) for i in range(n // 2)]),
                               ("drawn", drawn.benchmark(n // 2, seed=VAL_SEED + 2))):
            with torch.no_grad():
                feats = pipe.vision_features(pixel_values_from_images([s.image for s in held_out]))
            parts.append(f"{name} {pipe.probe.object_shape_accuracy(feats, held_out):.3f}")
        return "object shape acc " + " ".join(parts)
    if stage == "text" and pipe.cells:
        return "answer acc (cells) " + format_accuracy(document_accuracy(pipe, n, picture=False))
    if stage == "align":
        own, other = picture_gain(pipe, n // 4)
        gain = f"held-out loss own picture {own:.4f} another scene's picture {other:.4f}"
        return gain + (" | answer acc (picture) " + format_accuracy(document_accuracy(pipe, n, picture=True))
                       if pipe.cells else "")
    if stage == "instruct":
        report = []
        for name, val in (("val", [scenes.sample(VAL_SEED, i) for i in range(n)]),
                          ("drawn", drawn.benchmark(n, seed=VAL_SEED + 2))):
            acc = quick_val(pipe.model, pipe.encoder, val, pipe.device)
            report.append(f"{name} " + format_accuracy(acc))
        return " | ".join(report)
    return ""


def format_accuracy(acc: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in acc.items())


def document_accuracy(pipe: Pipeline, n: int, picture: bool) -> dict[str, float]:
    """Teacher-forced first-answer-word accuracy, per question type, on ``n`` held-out single-question
    cell-format documents (question types round-robin), prefixed by the cell words or by the picture."""
    samples = [scenes.sample(VAL_SEED, i) for i in range(n)]
    prefixes = [[pipe.encoder.image] * NUM_VISION_TOKENS if picture else pipe.cell_ids(s) for s in samples]
    rows = [pipe.query_row(p, s.question) for s, p in zip(samples, prefixes)]
    ids, attention = pad(rows, pipe.encoder.pad)
    inputs = {"input_ids": ids.to(pipe.device), "attention_mask": attention.to(pipe.device)}
    if picture:
        inputs["pixel_values"] = pixel_values_from_images([s.image for s in samples]).to(pipe.device)
    pipe.model.eval()
    with torch.no_grad():
        logits = pipe.model(**inputs).logits
    last = attention.sum(1) - 1
    guess = logits[torch.arange(len(rows)), last.to(pipe.device)].argmax(-1).tolist()
    right: dict[str, list[bool]] = {}
    for s, g in zip(samples, guess):
        right.setdefault(s.qtype, []).append(g == pipe.encoder.words(s.answer)[0])
    acc = {k: float(np.mean(v)) for k, v in right.items()}
    return {"all": float(np.mean(list(acc.values()))), **acc}


def picture_gain(pipe: Pipeline, n: int) -> tuple[float, float]:
    """Held-out caption loss with each scene's own picture and with another scene's picture.

    Equal losses mean the language model does not read the picture: the captions are predicted
    from the language alone.  The gap is what the alignment stage has taught it to see."""
    samples = [drawn.training_sample(VAL_SEED + 3, i, pipe.args.drawn_share, balanced=False, **pipe.align_turns)
               for i in range(n)]
    batch = {k: v.to(pipe.device) for k, v in pipe.align_batch(samples).items()}
    pipe.model.eval()
    with torch.no_grad():
        own = pipe.model(**batch).loss.item()
        batch["pixel_values"] = batch["pixel_values"].roll(1, 0)  # every scene gets its neighbour's picture
        other = pipe.model(**batch).loss.item()
    return own, other


def cell_readout(pipe: Pipeline, n: int) -> dict[str, float]:
    """``cells.readout`` on ``n`` held-out benchmark scenes: what of each cell word the projector
    reproduces (the language model read the cell words; does the picture say the same?)."""
    samples = [scenes.sample(VAL_SEED, i) for i in range(n)]
    pipe.model.eval()
    with torch.no_grad():
        patches = pipe.model.model.multi_modal_projector(
            pipe.vision_features(pixel_values_from_images([s.image for s in samples])))
    return cells.readout(patches, pipe.model.get_input_embeddings(), pipe.processor.tokenizer,
                         [s.objects for s in samples], pipe.args.cell_words)


def run_stage(pipe: Pipeline, stage: Stage, progress: Progress) -> None:
    """Train ``stage`` from where ``progress`` says, logging and checkpointing as it goes."""
    start = progress.start_of(stage.name)
    if start is None or start >= stage.steps:
        return
    params = pipe.trained_parameters(stage.name)
    pipe.freeze_all_but(params)
    opt = torch.optim.AdamW(pipe.optimizer_groups(stage.name, params), lr=stage.lr, betas=(0.9, 0.98))
    if start > 0 and progress.optimizer_state is not None:
        opt.load_state_dict(progress.optimizer_state)
    pipe.model.train()
    t0, ema = time.time(), None
    already = progress.minutes.get(stage.name, 0.0)
    print(f"stage {stage.name}: steps {start}..{stage.steps}, batch {stage.batch_size}, lr {stage.lr}", flush=True)
    for step in range(start, stage.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, stage.steps, stage.lr, stage.warmup) * g.get("lr_scale", 1.0)
        loss = pipe.batch_loss(stage.name, step, stage.batch_size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        progress.minutes[stage.name] = already + (time.time() - t0) / 60
        last = step + 1 == stage.steps
        every = pipe.args.val_every if stage.name == "instruct" else pipe.args.log_every * 4
        if (step + 1) % pipe.args.log_every == 0 or last:
            extra = stage_report(pipe, stage.name) if (step + 1) % every == 0 or last else ""
            pipe.model.train()
            print(f"{stage.name} step {step + 1}/{stage.steps} loss {ema:.4f} "
                  f"{(step + 1 - start) * stage.batch_size / (time.time() - t0):.1f} scenes/s "
                  f"{progress.minutes[stage.name]:.1f} min {extra}", flush=True)
        progress.save(stage.name, step + 1, opt, force=last)
    torch.save({"model": pipe.model.state_dict()}, os.path.join(os.path.dirname(progress.path), f"{stage.name}.pt"))


def save_model(pipe: Pipeline, args: argparse.Namespace, minutes: dict[str, float]) -> None:
    """The stock LLaVA model, its generation config, processor and ``training_args.json``."""
    pipe.model.eval()
    for p in pipe.model.parameters():
        p.requires_grad_(True)
    os.makedirs(args.out, exist_ok=True)
    pipe.model.save_pretrained(args.out)
    pipe.model.generation_config.save_pretrained(args.out)
    pipe.processor.save_pretrained(args.out)
    record = {k: v for k, v in vars(args).items() if k not in ("resume", "device", "ckpt_dir", "out")}
    record.update(recipe="shapes.pipeline (standard LVLM pipeline, no attention or read-out aids)",
                  stage_minutes={k: round(v, 1) for k, v in minutes.items()},
                  total_minutes=round(sum(minutes.values()), 1))
    with open(os.path.join(args.out, "training_args.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"saved model + processor to {args.out} ({record['total_minutes']} min of training)", flush=True)


def measure_stage(pipe: Pipeline, args: argparse.Namespace) -> None:
    """``--picture-gain`` / ``--cell-readout``: print one measurement of a saved stage."""
    pipe.model.load_state_dict(torch.load(args.picture_gain or args.cell_readout, map_location=pipe.device)["model"])
    if args.picture_gain:
        own, other = picture_gain(pipe, args.val_size)
        print(f"caption loss with the scene's own picture {own:.4f}, with another scene's picture {other:.4f} "
              f"({args.val_size} held-out scenes)")
    else:
        shares = cell_readout(pipe, args.val_size // 2)
        print(f"patches whose nearest cell word is their own ({args.val_size // 2} held-out scenes): "
              + ", ".join(f"{k} {100 * v:.1f} %" for k, v in shares.items()))


def main(argv: list[str] | None = None) -> None:
    """Run the four stages (or what is left of them with ``--resume``), then save the model."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cell_readout and args.text_format == "caption":
        parser.error("--cell-readout needs --text-format cells or cell-chats (the captions have no cell words)")
    torch.set_num_threads(args.threads)
    pipe = Pipeline(args, torch.device(args.device))
    if args.picture_gain or args.cell_readout:
        measure_stage(pipe, args)
        return
    progress = Progress(pipe, args.ckpt_dir, args.ckpt_minutes)
    if args.resume and os.path.exists(progress.path):
        progress.restore()
    elif args.init_from:
        progress.start_from(args.init_from, args.start_stage)
    for stage in stages_from(args):
        run_stage(pipe, stage, progress)
    save_model(pipe, args, progress.minutes)


if __name__ == "__main__":
    main()
