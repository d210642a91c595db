"""The GPU check: one script, one GPU, under 10 minutes, one JSON file and one markdown table.

    python -m benchmarks.gpu_check --out results/gpu            # on the GPU machine
    python -m benchmarks.gpu_check --dry-run --out /tmp/gpu     # CPU, narrowed models (the test suite runs this)

Sections (``--sections`` picks some), on real-size random-weight fixtures of the suggested
checkpoints (``benchmarks.checkpoints``) in bfloat16, initialised on the GPU:

``exact``    keep-all = unmodified model with SDPA and, when flash-attn is installed, with
             FlashAttention-2 (logits within the bf16 tolerance of ``v2drop.check``, same greedy
             tokens), on LLaVA-OneVision-0.5B at full resolution (a 640×480 photo, 2,929 tokens);
``memory``   CUDA peak memory of one prefill above the loaded model, unpruned vs V²Drop vs FastV
             (whose full L×L attention matrix at layer K-1 is part of its cost) vs FastV-lite, at
             the paper-192 budget;
``latency``  language-model prefill time and end-to-end ``generate`` latency (32 new tokens) at the
             paper's image budgets (192 / 128 / 64 of 576, layers scaled to the depth) on the 0.5B
             (OneVision) and 7B (LLaVA-1.5) shapes;
``video``    LLaVA-OneVision-0.5B on a 32-frame video (32 × 196 + 1 tokens): prefill time and
             CUDA peak memory, unpruned vs V²Drop.
``ragged``   Qwen2-VL-2B on a ragged batch (the photo, the photo cropped wide, a text-only prompt),
             with SDPA and, when flash-attn is installed, FlashAttention-2 (the unpadded varlen path,
             which the CPU test suite covers only with a stand-in kernel): keep-all = unmodified, each
             row = the row alone under V²Drop, cache = no cache;
``throughput`` Qwen2-VL-2B images/s at batch 1, 4, 8, unpruned vs V²Drop, same-size vs mixed-size
             16×16-token images (``benchmarks.throughput``), and the two batch targets.

``--dry-run`` runs every section on the CPU with the narrowed fixtures, float32, a 160×120 photo,
4 frames and one repeat, so that the script's plumbing is tested here before it first meets a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import transformers
from PIL import Image

from benchmarks import checkpoints
from v2drop import apply, get_adapter
from v2drop.adapters import decoder_depth
from v2drop.check import check_keep_all, prompt_inputs
from v2drop.schedule import PRESETS, DropSchedule

__all__ = ["Settings", "main", "SECTIONS"]


@dataclass(frozen=True)
class Settings:
    """What one run uses: the real GPU check, or the CPU dry run."""

    device: str
    dtype: torch.dtype
    size: str                 # fixture size: "real" or "narrow"
    frames: int
    repeats: int
    new_tokens: int
    image_size: tuple[int, int] = (640, 480)

    @classmethod
    def for_run(cls, dry_run: bool) -> "Settings":
        if dry_run:
            return cls("cpu", torch.float32, "narrow", frames=4, repeats=1, new_tokens=2, image_size=(160, 120))
        return cls("cuda", torch.bfloat16, "real", frames=32, repeats=3, new_tokens=32)


def photo(size: tuple[int, int]) -> Image.Image:
    """A real photo (the one ``v2drop.check`` bundles), resized to ``size``."""
    from v2drop.check import PHOTO

    return Image.open(PHOTO).convert("RGB").resize(size)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_seconds(fn: Callable[[], Any], settings: Settings) -> float:
    times = []
    for _ in range(settings.repeats):
        _sync(settings.device)
        start = time.perf_counter()
        fn()
        _sync(settings.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_above(fn: Callable[[], Any], settings: Settings) -> int | None:
    """CUDA peak allocation during ``fn`` above what was allocated before (None on CPU)."""
    if settings.device != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _load(name: str, settings: Settings, attn: str = "sdpa") -> tuple[torch.nn.Module, Any]:
    model, processor = checkpoints.build(name, settings.size, settings.dtype, attn_implementation=attn,
                                         device=settings.device)
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or 0
    return model, processor


def _image_inputs(model: torch.nn.Module, processor: Any, settings: Settings) -> dict:
    device = torch.device(settings.device)
    inputs = prompt_inputs(processor, photo(settings.image_size), ["What is in this image?"], device)
    return {k: v.to(settings.dtype) if k.startswith("pixel_values") else v for k, v in inputs.items()}


def _vision_count(model: torch.nn.Module, inputs: dict) -> int:
    ids = torch.tensor(get_adapter(model).vision_token_ids(), device=inputs["input_ids"].device)
    return int(torch.isin(inputs["input_ids"][0], ids).sum())


def _forward(model: torch.nn.Module, inputs: dict) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(**inputs, logits_to_keep=1)  # as generate's prefill: no vocab × length logits
    return run


def _release() -> None:
    """Give the memory of the models the caller has just deleted back (before the next one loads)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
        return True
    except ImportError:
        return False


def _paper(depth: int, budget: int) -> DropSchedule:
    return DropSchedule.parse(PRESETS[f"llava-1.5-{budget}"][0]).scaled_to(depth)


# ----------------------------------------------------------------------------- sections
def section_exact(settings: Settings) -> list[dict]:
    """Keep-all = unmodified, per attention kernel (bf16 tolerance on the GPU)."""
    kernels = ["sdpa"] + (["flash_attention_2"] if settings.device == "cuda" and _has_flash_attn() else [])
    rows = []
    for attn in kernels:
        model, processor = _load("llava-onevision-0.5b", settings, attn)
        inputs = _image_inputs(model, processor, settings)
        result = check_keep_all(model, inputs, settings.new_tokens)
        rows.append({"section": "exact", "model": "llava-onevision-0.5b", "config": attn, "status": result.status,
                     "vision_tokens": _vision_count(model, inputs), "detail": result.detail})
        del model, inputs
        _release()
    if "flash_attention_2" not in kernels:
        rows.append({"section": "exact", "model": "llava-onevision-0.5b", "config": "flash_attention_2",
                     "status": "SKIP", "detail": "flash-attn is not installed" if settings.device == "cuda" else "CPU"})
    return rows


def section_memory(settings: Settings) -> list[dict]:
    """Peak memory of one prefill: unpruned, V²Drop, FastV (L×L attention), FastV-lite."""
    from benchmarks.bench import matched_schedule

    model, processor = _load("llava-onevision-0.5b", settings)
    inputs = _image_inputs(model, processor, settings)
    n, depth = _vision_count(model, inputs), decoder_depth(model)
    reference = _paper(depth, 192)
    rows = []
    for method in ("none", "v2drop", "fastv", "fastv-lite"):
        if method == "none":
            peak, schedule = _peak_above(_forward(model, inputs), settings), None
        else:
            schedule, _ = matched_schedule(method, reference, depth, n)
            with apply(model, schedule, method):
                peak = _peak_above(_forward(model, inputs), settings)
        rows.append({"section": "memory", "model": "llava-onevision-0.5b", "config": method, "vision_tokens": n,
                     "schedule": str(schedule or ""), "peak_bytes": peak})
    del model, inputs
    _release()
    return rows


def section_latency(settings: Settings) -> list[dict]:
    """LM prefill and end-to-end latency at the paper's budgets, 0.5B and 7B shapes."""
    from v2drop.check import lm_prefill_seconds

    rows = []
    for name in ("llava-onevision-0.5b", "llava-1.5-7b", "llava-next-7b"):
        model, processor = _load(name, settings)
        inputs = _image_inputs(model, processor, settings)
        n, depth = _vision_count(model, inputs), decoder_depth(model)
        gen = dict(max_new_tokens=settings.new_tokens, min_new_tokens=settings.new_tokens, do_sample=False)
        for label, schedule in [("none", None)] + [(f"paper-{b}", _paper(depth, b)) for b in (192, 128, 64)]:
            session = apply(model, schedule) if schedule else _nothing()
            with session:
                lm_prefill_seconds(model, inputs, 1)  # warm-up
                prefill = lm_prefill_seconds(model, inputs, settings.repeats)
                end_to_end = _median_seconds(lambda: model.generate(**inputs, **gen), settings)
            rows.append({"section": "latency", "model": name, "config": label, "vision_tokens": n,
                         "average_kept": schedule.average_kept(depth, n) if schedule else n,
                         "schedule": str(schedule or ""), "prefill_s": prefill, "end_to_end_s": end_to_end,
                         "new_tokens": settings.new_tokens})
        del model, inputs
        _release()
    return rows


def section_video(settings: Settings) -> list[dict]:
    """OneVision-0.5B on a ``settings.frames``-frame video: prefill time and peak memory."""
    from v2drop.check import lm_prefill_seconds
    from v2drop.video_inputs import video_inputs

    model, processor = _load("llava-onevision-0.5b", settings)
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)) for _ in range(settings.frames)]
    inputs = video_inputs(processor, frames, "What happens in this video?")
    inputs = {k: (v.to(settings.device, settings.dtype) if k.startswith("pixel_values") else v.to(settings.device))
              if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    n, depth = _vision_count(model, inputs), decoder_depth(model)
    rows = []
    for label, schedule in (("none", None), ("v2drop paper-192", _paper(depth, 192))):
        with apply(model, schedule) if schedule else _nothing():
            peak = _peak_above(_forward(model, inputs), settings)
            prefill = lm_prefill_seconds(model, inputs, settings.repeats)
        rows.append({"section": "video", "model": "llava-onevision-0.5b", "config": label, "frames": settings.frames,
                     "vision_tokens": n, "schedule": str(schedule or ""), "prefill_s": prefill, "peak_bytes": peak})
    del model, inputs
    _release()
    return rows


def _ragged_inputs(processor: Any, settings: Settings, which: Sequence[int] = (0, 1, 2)) -> dict:
    """A left-padded ragged batch (or some of its rows): the photo, the photo cropped wide (another
    vision-token count), and a text-only prompt."""
    width, height = settings.image_size
    images = [photo(settings.image_size), photo(settings.image_size).crop((0, 0, width, height // 2)), None]
    questions = ["What is in this image?", "Describe the colours in this photo.", "Name three colours."]
    texts, pixels = [], []
    for i in which:
        content = ([{"type": "image"}] if images[i] else []) + [{"type": "text", "text": questions[i]}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False))
        pixels += [images[i]] if images[i] else []
    processor.tokenizer.padding_side = "left"
    inputs = processor(images=pixels or None, text=texts, return_tensors="pt", padding=True)
    return {k: v.to(settings.device, settings.dtype) if k.startswith("pixel_values") else v.to(settings.device)
            for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def _last_logits(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs, logits_to_keep=1).logits[:, -1].float()      # (B, V)


def _alone_logits(model: torch.nn.Module, processor: Any, settings: Settings) -> torch.Tensor:
    """Each row of the ragged batch run alone: its last-token logits, stacked (3, V)."""
    return torch.cat([_last_logits(model, _ragged_inputs(processor, settings, [i])) for i in range(3)])


def section_ragged(settings: Settings) -> list[dict]:
    """A ragged batch (two image sizes + a text-only prompt) on Qwen2-VL-2B, per attention kernel
    (FlashAttention-2: the unpadded varlen path): keep-all = unmodified; under V²Drop each row's
    last-token logits = the row run alone (within the dtype's tolerance plus the unpruned model's
    own batch-vs-alone difference); cache = no cache."""
    from v2drop.check import TOLERANCE, check_cache

    kernels = ["sdpa"] + (["flash_attention_2"] if settings.device == "cuda" and _has_flash_attn() else [])
    rows = []
    for attn in kernels:
        model, processor = _load("qwen2-vl-2b", settings, attn)
        inputs, depth = _ragged_inputs(processor, settings), decoder_depth(model)
        counts = [int(c) for c in torch.isin(inputs["input_ids"], torch.tensor(
            get_adapter(model).vision_token_ids(), device=settings.device)).sum(1)]
        schedule = _paper(depth, 192)
        ref = _last_logits(model, inputs)
        with apply(model, DropSchedule.keep_all([1, depth // 2])):
            keep_all = float((_last_logits(model, inputs) - ref).abs().max())
        alone_ref = _alone_logits(model, processor, settings)
        with apply(model, schedule):
            pruned = _last_logits(model, inputs)
            alone = _alone_logits(model, processor, settings)
        noise = float((ref - alone_ref).abs().max())
        diff = float((pruned - alone).abs().max())
        tol = TOLERANCE.get(settings.dtype, 1e-2) * max(1.0, float(ref.abs().max()))
        cache = check_cache(model, inputs, schedule, settings.new_tokens)
        ok = keep_all <= tol and diff <= tol + 2 * noise and cache.status == "PASS"
        rows.append({"section": "ragged", "model": "qwen2-vl-2b", "config": attn, "status": "PASS" if ok else "FAIL",
                     "vision_tokens": "/".join(map(str, counts)), "schedule": str(schedule),
                     "detail": f"keep-all Δ {keep_all:.2e}; batch vs alone Δ {diff:.2e} (unpruned {noise:.2e}, "
                               f"allowed {tol:.1e} + 2×unpruned); cache: {cache.detail}"})
        del model, inputs
        _release()
    if "flash_attention_2" not in kernels:
        rows.append({"section": "ragged", "model": "qwen2-vl-2b", "config": "flash_attention_2", "status": "SKIP",
                     "detail": "flash-attn is not installed" if settings.device == "cuda" else "CPU"})
    return rows


def section_throughput(settings: Settings) -> list[dict]:
    """Images/s at batch 1, 4, 8, unpruned and V²Drop, same-size and mixed-size images
    (``benchmarks.throughput``) on Qwen2-VL-2B; the two targets in the last row."""
    from benchmarks.throughput import run_throughput, targets

    model, _ = _load("qwen2-vl-2b", settings)
    schedule = DropSchedule.preset("qwen2-vl-official").scaled_to(decoder_depth(model))
    real = settings.device == "cuda"
    found = run_throughput(model, 16 if real else 2, schedule, images=8 if real else 4,
                           batch_sizes=(1, 4, 8) if real else (1, 4), repeats=settings.repeats, warmup=int(real),
                           new_tokens=settings.new_tokens, log=lambda _: None)
    rows = [{"section": "throughput", "model": "qwen2-vl-2b", "config": f"{r['set']} b={r['batch_size']} {r['method']}",
             "vision_tokens": r["vision_tokens"], "images_per_s": r["images_per_s"],
             "padding_share": r["padding_share"], "schedule": r["schedule"]} for r in found]
    goals = targets(found)
    rows.append({"section": "throughput", "model": "qwen2-vl-2b", "config": "targets", "status": "INFO",
                 "detail": ", ".join(f"{k} {v:.2f}" for k, v in goals.items() if v is not None), **goals})
    del model
    _release()
    return rows


def _nothing():
    import contextlib
    return contextlib.nullcontext()


SECTIONS = {"exact": section_exact, "memory": section_memory, "latency": section_latency, "video": section_video,
            "ragged": section_ragged, "throughput": section_throughput}


# ----------------------------------------------------------------------------- output
def _cell(value: Any, scale: float = 1.0, digits: int = 1) -> str:
    return "" if value is None else f"{value * scale:,.{digits}f}"


def table(rows: list[dict]) -> str:
    """One markdown table of every row."""
    lines = ["| section | model | config | vision tokens | prefill ms | end-to-end ms | peak MiB | status / schedule |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = r.get("status", "") + (f" {r['detail']}" if r.get("status") in ("FAIL", "SKIP", "INFO") else "")
        if r.get("images_per_s") is not None:
            note = f"{r['images_per_s']:.2f} images/s, padding {100 * r['padding_share']:.0f} % of slots"
        note = note or r.get("schedule", "")
        lines.append(f"| {r['section']} | {r['model']} | {r['config']} | {r.get('vision_tokens', '')} | "
                     f"{_cell(r.get('prefill_s'), 1000)} | {_cell(r.get('end_to_end_s'), 1000)} | "
                     f"{_cell(r.get('peak_bytes'), 1 / 2**20, 0)} | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU, narrowed models, one repeat")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --dry-run")
    settings = Settings.for_run(args.dry_run)
    start, rows, timings = time.perf_counter(), [], {}
    for name in args.sections:
        t0 = time.perf_counter()
        rows += SECTIONS[name](settings)
        timings[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {timings[name]} s", flush=True)
    report = {"dry_run": args.dry_run, "device": torch.cuda.get_device_name() if settings.device == "cuda" else "cpu",
              "dtype": str(settings.dtype), "torch": torch.__version__, "transformers": transformers.__version__,
              "section_seconds": timings, "total_seconds": round(time.perf_counter() - start, 1), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "gpu_check.md").write_text(table(rows) + "\n")
    print(table(rows))
    return 1 if any(r.get("status") == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
