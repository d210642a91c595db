"""The lmms-eval model ``v2drop``: a supported hub LVLM, unpruned or under a drop schedule and a method.

    lmms-eval --model v2drop \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,schedule=llava-1.5-192,method=v2drop \\
        --tasks gqa,pope --batch_size 1 --output_path logs/

Model args: ``pretrained`` (hub id or folder), ``schedule`` (a preset name, or stages written
``3:0.5;17:0.3;22:0`` or quoted ``"3:0.5,17:0.3,22:0"``; ``none`` = no drop), ``method``
(``v2drop.available_methods()`` or ``none``), ``dtype`` (``auto``, ``bfloat16``, ``float16``,
``float32``), ``attn_implementation`` (``sdpa``, ``eager``, ``flash_attention_2``), ``batch_size``,
``device``, ``max_frames`` (frames per video), ``seed`` (for ``method=random``),
``trust_remote_code``. A model arg wins over the same lmms-eval flag.

Every batch runs inside ``v2drop.apply``; the unpruned model runs there too, with the empty
schedule, so that its prefill time and memory are measured by the same hooks. Under
``accelerate launch`` each process loads its own copy, runs its share of the requests and drops
on its own; the run's statistics (:mod:`v2drop.lmms.stats`) are summed over the processes and
handed to lmms-eval's ``log_metrics``, which writes them to the results' ``throughput`` block.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from loguru import logger as eval_logger
from tqdm import tqdm

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics

from ..adapters import get_adapter
from ..engine import apply
from ..loading import load_model
from ..schedule import DropSchedule
from ..scoring import available_methods, get_method
from ..video import DecodedVideo
from ..video_inputs import load_model_video, video_batch_inputs
from .inputs import chat_text, image_batch, is_video, strip_placeholders
from .requests import Batch, batches, generation_kwargs, parse_schedule, truncate
from .stats import EvalStats

__all__ = ["V2DropLMM"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class V2DropLMM(lmms):
    """lmms-eval "simple" model: context text + visuals in, greedy (or sampled) text out."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        schedule: str = "none",
        method: str = "v2drop",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        batch_size: int | str = 1,
        device: str | None = None,
        max_frames: int | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        max_batch_size: int | None = None,  # lmms-eval's flag; batches here have a fixed size
    ) -> None:
        super().__init__()
        self.method = str(method)
        if self.method != "none" and self.method not in available_methods():
            raise ValueError(f"unknown method {method!r}; use 'none' or one of {', '.join(available_methods())}")
        self.schedule = DropSchedule(()) if self.method == "none" else parse_schedule(str(schedule))
        self.batch_size_per_process = _positive_int(batch_size, "batch_size")
        self.max_frames = None if max_frames is None else _positive_int(max_frames, "max_frames")
        self.seed = int(seed)
        self.accelerator = Accelerator()
        self._rank, self._world_size = _process_grid(self.accelerator)
        self._device = _pick_device(device, self.accelerator, self._world_size)
        self._model, self.processor = load_model(
            pretrained, device=str(self._device), dtype=_dtype(dtype), attn_implementation=attn_implementation,
            trust_remote_code=bool(trust_remote_code))
        self.pretrained = pretrained
        rule = get_method("v2drop" if self.method == "none" else self.method)
        self.schedule.validate(self.num_layers, allow_layer_zero=rule.allows_layer_zero)  # fail before any request
        eval_logger.info(f"v2drop: {pretrained} on {self._device} (process {self._rank + 1} of "
                         f"{self._world_size}), method={self.method}, schedule={self.schedule}")

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "V2DropLMM":
        """Like lmms-eval's, except that a model arg (e.g. ``batch_size=8``) overrides the flag of
        the same name instead of clashing with it (``--batch_size`` always has a value)."""
        from lmms_eval.utils import simple_parse_args_string

        args = {k: v for k, v in (additional_config or {}).items() if v is not None}
        args.update(simple_parse_args_string(arg_string))
        return cls(**args)

    # ------------------------------------------------------------------ properties lmms-eval reads
    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_process

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def num_layers(self) -> int:
        return self._model.config.get_text_config().num_hidden_layers

    # ------------------------------------------------------------------ lmms-eval requests
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers in request order. Consecutive requests of one task that share their generation
        settings run as one batch, whatever their vision-token counts (images of any size, text-only
        prompts): v2drop drops each row's own tokens. Within a batch, image (and text-only) requests
        and video requests run as two left-padded batches (see :meth:`_groups`)."""
        answers = [""] * len(requests)
        stats = EvalStats()
        groups = batches(requests, self.batch_size)
        for batch in tqdm(groups, disable=self.rank != 0, desc="v2drop responding"):
            for index, text in zip(batch.indices, self._generate(batch, stats)):
                answers[index] = text
        self._report(stats, "generate_until")
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), continuation is the greedy one)`` per request, with the
        vision tokens dropped in the one forward pass over context + continuation."""
        stats = EvalStats()
        results = [self._loglikelihood(request, stats)
                   for request in tqdm(requests, disable=self.rank != 0, desc="v2drop loglikelihood")]
        self._report(stats, "loglikelihood")
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("the v2drop model answers single-round tasks (generate_until, loglikelihood)")

    # ------------------------------------------------------------------ one batch
    def _generate(self, batch: Batch, stats: EvalStats) -> list[str]:
        visuals = [self._visuals(request) for request in batch.requests]
        texts: dict[int, str] = {}
        for group, group_visuals in self._groups(batch, visuals):
            texts.update(zip(group.indices, self._run(group, group_visuals, stats)))
        return [texts[i] for i in batch.indices]

    def _groups(self, batch: Batch, visuals: list[list[Any]]) -> list[tuple[Batch, list[list[Any]]]]:
        """The batch split into the requests that can share one processor call: image and text-only
        requests together; video requests together, decoded here (one video each), and for a family
        that stacks frames into one tensor (LLaVA-OneVision) only videos with as many frames."""
        keys = []
        for i, vs in enumerate(visuals):
            videos = [v for v in vs if is_video(v)]
            if videos:
                visuals[i] = [self._decode(videos[0])]
            stacked = bool(videos) and not get_adapter(self._model).ragged_videos
            keys.append(("video", len(visuals[i][0]) if stacked else 0) if videos else ("image", 0))
        out = []
        for key in dict.fromkeys(keys):
            rows = [i for i, k in enumerate(keys) if k == key]
            out.append((Batch([batch.indices[i] for i in rows], [batch.requests[i] for i in rows]),
                        [visuals[i] for i in rows]))
        return out

    def _run(self, batch: Batch, visuals: list[list[Any]], stats: EvalStats) -> list[str]:
        """One left-padded ``generate`` over the batch's requests (all images/text, or all videos)."""
        inputs = self._inputs([r.args[0] for r in batch.requests], visuals)
        kwargs, until = generation_kwargs(batch.requests[0].args[1], self._pad_id())
        with self._session() as session:
            start = time.perf_counter()
            with torch.inference_mode():
                output = self._model.generate(**inputs, **kwargs)
            elapsed = time.perf_counter() - start
        new = output[:, inputs["input_ids"].shape[1]:]                    # (B, new tokens)
        texts = [truncate(t, until) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        stats.add(session.trace, batch.real, elapsed, self._count_new(new, batch.real))
        return texts

    def _loglikelihood(self, request: Instance, stats: EvalStats) -> tuple[float, bool]:
        context, target, doc_to_visual, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        continuation = target if isinstance(target, str) else target(doc)
        images = [v for v in doc_to_visual(doc) if not is_video(v)]
        prompt = chat_text(self.processor, context, len(images))
        full = self._processor_call(images, prompt + continuation)
        n_prompt = self._processor_call(images, prompt)["input_ids"].shape[1]
        targets = full["input_ids"][:, n_prompt:]                           # (1, T) continuation ids
        with self._session() as session, torch.inference_mode():
            start = time.perf_counter()
            logits = self._model(**full).logits                            # (1, L_kept, V)
            elapsed = time.perf_counter() - start
        # text follows the vision tokens and is never dropped: the last T+1 positions predict it
        scores = logits[:, -targets.shape[1] - 1:-1].float().log_softmax(-1)
        logprob = scores.gather(-1, targets.unsqueeze(-1)).sum().item()
        greedy = bool((scores.argmax(-1) == targets).all())
        stats.add(session.trace, [not request.metadata.get("__padding_only__", False)], elapsed, 0)
        return logprob, greedy

    # ------------------------------------------------------------------ helpers
    def _visuals(self, request: Instance) -> list[Any]:
        doc_to_visual, doc_id, task, split = request.args[2:6]
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        return [v for v in (visuals or []) if v is not None]

    def _inputs(self, contexts: list[str], visuals: list[list[Any]]) -> Any:
        if any(isinstance(v, DecodedVideo) for vs in visuals for v in vs):  # a video batch (see _groups)
            prompts = [strip_placeholders(c).replace("<video>", "").strip() for c in contexts]
            inputs = video_batch_inputs(self.processor, [vs[0] for vs in visuals], prompts)
        else:
            inputs = image_batch(self.processor, contexts, visuals)
        return inputs.to(self._device, dtype=self._model.dtype)

    def _decode(self, path: str) -> DecodedVideo:
        """A video request's file, sampled to ``max_frames`` (or the model's default)."""
        return load_model_video(self._model, path, num_frames=self.max_frames)

    def _processor_call(self, images: list[Any], text: str) -> Any:
        inputs = self.processor(images=[i.convert("RGB") for i in images] or None, text=[text], return_tensors="pt")
        return inputs.to(self._device, dtype=self._model.dtype)

    def _session(self) -> Any:
        return apply(self._model, self.schedule, method="v2drop" if self.method == "none" else self.method,
                     seed=self.seed)

    def _pad_id(self) -> int | None:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _count_new(self, new: torch.Tensor, real: list[bool]) -> int:
        """New tokens of the real rows, not counting the padding after an early end."""
        pad = self._pad_id()
        tokens = torch.ones_like(new, dtype=torch.bool) if pad is None else new.ne(pad)   # (B, new)
        return sum(int(tokens[b].sum()) for b, is_real in enumerate(real) if is_real)

    def _report(self, stats: EvalStats, kind: str) -> None:
        """Hand the run's statistics, summed over all processes, to lmms-eval's ``log_metrics``."""
        if stats.samples == 0 and self._world_size == 1:
            return
        eval_logger.info(f"v2drop {kind}, process {self._rank}: {stats.metrics()}")
        total = EvalStats.merged(_gather(stats, self._world_size))
        metrics = total.metrics()
        seconds = total.generate_seconds
        log_metrics(total_elapsed_time=seconds, total_gen_tokens=total.generated_tokens,
                    avg_speed=total.generated_tokens / seconds if seconds > 0 else 0.0,
                    additional_metrics={**metrics, "method": self.method, "schedule": str(self.schedule),
                                        "memory_kind": total.memory_kind})


def _process_grid(accelerator: Accelerator) -> tuple[int, int]:
    """``(rank, world size)``. torch.distributed's when a launcher started it: on CPU,
    ``accelerate launch --multi_gpu`` runs torchrun with gloo while the Accelerator reports a
    single process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return accelerator.process_index, accelerator.num_processes


def _pick_device(device: str | None, accelerator: Accelerator, world_size: int) -> torch.device:
    """The asked device for a single process; with several, each process takes its own GPU
    (``cuda:<LOCAL_RANK>``), or the CPU where there is none, whatever ``device`` says."""
    if world_size > 1:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", accelerator.local_process_index)))
        return torch.device("cpu")
    return accelerator.device if device is None else torch.device(device)


def _gather(stats: EvalStats, world_size: int) -> list[EvalStats]:
    """Every process's statistics (collective: all processes call it at the same point)."""
    if world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [stats]
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, stats)
    return parts


def _dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "auto"):
        return None  # load_model: bfloat16 on CUDA, float32 on CPU
    if name not in _DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number
