"""Self-check of v2drop on one model: ``python -m v2drop.check MODEL``.

``MODEL`` is a hub id or a local folder. The command loads the model (GPU if there is one) and,
on a real photo (``--image``, else the bundled one), checks the invariants that make V²Drop's
answers trustworthy on that model:

* keep-all equals the unmodified model (logits within the dtype's tolerance, same greedy tokens);
* with a KV cache equals without one, under the paper's schedule scaled to the model's depth;
* a batch equals its samples run one by one (two prompts on the same image, left-padded);
* the trace's patch layout has one cell per vision token;

and reports the vision-token count and layout, the measured language-model prefill speed-up
against the FLOPs prediction, and the peak memory. It prints a pass/fail table and exits 0 only
if every check passed (1 if one failed, 2 for an unsupported model, 3 if it could not load).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .adapters import UnsupportedModelError, adapter_class, decoder_depth, get_adapter, supported_architectures
from .engine import apply
from .memory import memory_now, peak_rss, reset_peak_rss
from .schedule import DropSchedule

__all__ = ["CheckResult", "run_checks", "main", "PHOTO", "TOLERANCE", "check_keep_all", "prompt_inputs",
           "lm_prefill_seconds"]

PHOTO = Path(__file__).parent / "data" / "photo.jpg"   # scikit-image's "astronaut" (NASA, public domain)
#: largest logit difference allowed between keep-all and the unmodified model, per dtype
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
LOGIT_POSITIONS = 16   # prompt positions whose logits keep-all compares (all of them would cost vocab × length)
QUESTIONS = ("What is in this image?", "Describe the colours and the people or objects in this photo in detail.")
EXIT_FAILED, EXIT_UNSUPPORTED, EXIT_LOAD = 1, 2, 3


@dataclass
class CheckResult:
    """One row of the table: ``status`` is "PASS", "FAIL" or "INFO" (a report, never a failure)."""

    name: str
    status: str
    detail: str


# ----------------------------------------------------------------------------- inputs
def prompt_inputs(processor: Any, image: Image.Image, questions: Sequence[str], device: torch.device) -> dict:
    """A left-padded batch of chat prompts, one per question, each with ``image``."""
    texts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
        add_generation_prompt=True, tokenize=False) for q in questions]
    processor.tokenizer.padding_side = "left"  # generation needs the prompt's end aligned
    inputs = processor(images=[image] * len(texts), text=texts, return_tensors="pt", padding=True)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _cast_pixels(inputs: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if k.startswith("pixel_values") else v for k, v in inputs.items()}


def _greedy(model: torch.nn.Module, inputs: dict, max_new_tokens: int, use_cache: bool = True) -> torch.Tensor:
    """New token ids of a greedy generation (prompt stripped), EOS not special-cased."""
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             do_sample=False, use_cache=use_cache)
    return out[:, inputs["input_ids"].shape[1]:].cpu()


# ----------------------------------------------------------------------------- checks
def check_keep_all(model: torch.nn.Module, inputs: dict, max_new_tokens: int) -> CheckResult:
    """A schedule that keeps every token must leave logits and greedy tokens unchanged."""
    depth = decoder_depth(model)
    schedule = DropSchedule.keep_all(sorted({1, depth // 4, depth // 2, depth - 1} - {0}))
    with torch.inference_mode():  # the prompt's last positions: the text after the image
        ref = model(**inputs, logits_to_keep=LOGIT_POSITIONS).logits.float()
    ref_ids = _greedy(model, inputs, max_new_tokens)
    with apply(model, schedule):
        with torch.inference_mode():
            logits = model(**inputs, logits_to_keep=LOGIT_POSITIONS).logits.float()
        ids = _greedy(model, inputs, max_new_tokens)
    diff = float((logits - ref).abs().max())
    tolerance = TOLERANCE.get(model.dtype, 1e-2) * max(1.0, float(ref.abs().max()))
    ok = diff <= tolerance and torch.equal(ids, ref_ids)
    return CheckResult("keep-all = unmodified model", "PASS" if ok else "FAIL",
                       f"max |Δlogit| {diff:.2e} (allowed {tolerance:.1e}); greedy tokens "
                       f"{'equal' if torch.equal(ids, ref_ids) else 'DIFFER'} ({schedule})")


def check_cache(model: torch.nn.Module, inputs: dict, schedule: DropSchedule, max_new_tokens: int) -> CheckResult:
    """Under ``schedule``, generating with and without a KV cache must give the same tokens."""
    with apply(model, schedule):
        cached = _greedy(model, inputs, max_new_tokens, use_cache=True)
        uncached = _greedy(model, inputs, max_new_tokens, use_cache=False)
    ok = torch.equal(cached, uncached)
    return CheckResult("KV cache = no cache", "PASS" if ok else "FAIL",
                       f"{max_new_tokens} greedy tokens {'equal' if ok else 'DIFFER'} under {schedule}")


def check_batch(model: torch.nn.Module, batch: dict, singles: Sequence[dict], schedule: DropSchedule,
                max_new_tokens: int) -> CheckResult:
    """Each row of a padded batch must generate what its prompt generates alone."""
    with apply(model, schedule):
        together = _greedy(model, batch, max_new_tokens)
        alone = [_greedy(model, single, max_new_tokens)[0] for single in singles]
    same = [torch.equal(together[i], alone[i]) for i in range(len(alone))]
    return CheckResult("batch = one by one", "PASS" if all(same) else "FAIL",
                       f"{len(alone)} prompts of different lengths, left-padded: "
                       + ", ".join("equal" if s else "DIFFER" for s in same))


def check_layout(model: torch.nn.Module, inputs: dict, schedule: DropSchedule) -> tuple[CheckResult, int]:
    """The trace's layout must have one cell per vision token; reports count, grids and kinds."""
    with apply(model, schedule) as run:
        with torch.inference_mode():
            model(**inputs, logits_to_keep=1)
    sample = run.trace.samples[0]
    layout = sample.layout
    n = sample.num_vision_tokens
    if layout is None:
        return CheckResult("vision tokens and layout", "FAIL", f"{n} vision tokens; no layout"), n
    newlines = sum(1 for _, r, _ in layout.cells if r < 0)
    grids = ", ".join(f"{kind} {rows}×{cols}" for kind, (rows, cols) in zip(layout.kinds, layout.grids))
    ok = len(layout.cells) == n > 0
    return CheckResult("vision tokens and layout", "PASS" if ok else "FAIL",
                       f"{n} vision tokens, {len(layout.cells)} layout cells ({grids}; {newlines} newline)"), n


def lm_prefill_seconds(model: torch.nn.Module, inputs: dict, repeats: int) -> float:
    """Median wall time of the language model's forward over the prompt (vision tower excluded)."""
    lm = get_adapter(model).language_model()
    cuda = next(model.parameters()).device.type == "cuda"
    times: list[float] = []
    start: list[float] = []

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def before(*_: Any) -> None:
        sync()
        start.append(time.perf_counter())

    def after(*_: Any) -> None:
        sync()
        times.append(time.perf_counter() - start.pop())

    handles = [lm.register_forward_pre_hook(before), lm.register_forward_hook(after)]
    try:
        for _ in range(repeats):
            with torch.inference_mode():
                model(**inputs, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return statistics.median(times)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def _peak(device: torch.device) -> tuple[int | None, str]:
    """``(bytes, what)``: CUDA's peak allocation, or the process's peak RSS since the last reset
    (the model included), or its current RSS where the peak cannot be reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA peak allocated"
    if peak_rss() is not None:
        return peak_rss(), "process peak RSS, model included"
    return memory_now(device)[0], "process RSS after each run"


def report_speed(model: torch.nn.Module, inputs: dict, schedule: DropSchedule, n_vision: int,
                 repeats: int) -> list[CheckResult]:
    """Measured LM prefill speed-up under ``schedule`` vs the FLOPs prediction; peak memory of each."""
    device = next(model.parameters()).device
    text = model.config.get_text_config(decoder=True)
    heads = int(text.num_attention_heads)
    kv_hidden = int(getattr(text, "num_key_value_heads", heads) or heads) * (int(text.hidden_size) // heads)
    predicted = 1 / schedule.flops_ratio(decoder_depth(model), n_vision, int(inputs["input_ids"].shape[1]) - n_vision,
                                         int(text.hidden_size), int(text.intermediate_size), kv_hidden)
    peaks = {}
    lm_prefill_seconds(model, inputs, 1)  # warm-up
    _reset_peak(device)
    full = lm_prefill_seconds(model, inputs, repeats)
    peaks["unpruned"] = _peak(device)
    _reset_peak(device)
    with apply(model, schedule):
        pruned = lm_prefill_seconds(model, inputs, repeats)
    peaks["V²Drop"] = _peak(device)
    memory = "; ".join(f"{name} {value / 2**30:.2f} GiB" for name, (value, _) in peaks.items() if value is not None)
    kind = peaks["unpruned"][1] or "unavailable"
    return [CheckResult("prefill speed-up", "INFO",
                        f"LM prefill {full * 1000:.0f} ms → {pruned * 1000:.0f} ms: ×{full / pruned:.2f} measured, "
                        f"×{predicted:.2f} predicted by FLOPs ({schedule}, median of {repeats})"),
            CheckResult("peak memory", "INFO", f"{memory} ({kind})")]


def run_checks(model: torch.nn.Module, processor: Any, image: Image.Image, max_new_tokens: int = 6,
               schedule: DropSchedule | None = None, repeats: int = 3) -> list[CheckResult]:
    """Every check and report on a loaded model; never raises for a failed check."""
    device = next(model.parameters()).device
    schedule = schedule or DropSchedule.preset("llava-1.5-192").scaled_to(decoder_depth(model))
    batch = _cast_pixels(prompt_inputs(processor, image, QUESTIONS, device), model.dtype)
    singles = [_cast_pixels(prompt_inputs(processor, image, [q], device), model.dtype) for q in QUESTIONS]
    try:
        layout, n_vision = check_layout(model, singles[0], schedule)
    except Exception as err:  # noqa: BLE001 - an error is a failed check, reported in the table
        layout, n_vision = _failed("vision tokens and layout", err), 0
    results = [layout,
               _guarded("keep-all = unmodified model", lambda: check_keep_all(model, singles[0], max_new_tokens)),
               _guarded("KV cache = no cache", lambda: check_cache(model, singles[0], schedule, max_new_tokens)),
               _guarded("batch = one by one", lambda: check_batch(model, batch, singles, schedule, max_new_tokens))]
    try:
        return results + report_speed(model, singles[0], schedule, n_vision, repeats)
    except Exception as err:  # noqa: BLE001
        return results + [_failed("prefill speed-up", err)]


def _failed(name: str, err: BaseException) -> CheckResult:
    return CheckResult(name, "FAIL", f"raised {type(err).__name__}: {err}")


def _guarded(name: str, check: Any) -> CheckResult:
    """``check()``, or a FAIL row saying what it raised (a crash is a failed invariant too)."""
    try:
        return check()
    except Exception as err:  # noqa: BLE001
        return _failed(name, err)


def format_table(model_name: str, results: Sequence[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"v2drop self-check: {model_name}", ""]
    lines += [f"{r.status:4}  {r.name:<{width}}  {r.detail}" for r in results]
    failed = sum(r.status == "FAIL" for r in results)
    lines += ["", "all checks passed" if not failed else f"{failed} check(s) FAILED"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def supported_or_message(name: str, trust_remote_code: bool = False) -> str | None:
    """None if ``name``'s config is of a supported family, else a message saying why not."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except ValueError as err:  # unknown model_type: transformers itself does not know the architecture
        return f"{name} is not a supported model: {err}"
    if adapter_class(config) is None:
        return (f"{name} is a {config.model_type!r} model, which v2drop does not support; supported model types: "
                f"{', '.join(supported_architectures())}")
    return None


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m v2drop.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="hub id or local folder")
    parser.add_argument("--image", type=Path, default=PHOTO, help="photo to check on (default: the bundled one)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--schedule", default=None, help="drop schedule (default: paper-192 scaled to the depth)")
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3, help="timed prefill runs per configuration")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        message = supported_or_message(args.model, args.trust_remote_code)
    except OSError as err:
        print(f"could not read the config of {args.model}: {err}", file=sys.stderr)
        return EXIT_LOAD
    if message:
        print(message, file=sys.stderr)
        return EXIT_UNSUPPORTED
    from .loading import load_model

    try:
        model, processor = load_model(args.model, device=device, trust_remote_code=args.trust_remote_code)
    except UnsupportedModelError as err:
        print(str(err), file=sys.stderr)
        return EXIT_UNSUPPORTED
    except (OSError, ValueError, RuntimeError) as err:
        print(f"could not load {args.model}: {err}", file=sys.stderr)
        return EXIT_LOAD
    image = Image.open(args.image).convert("RGB")
    schedule = DropSchedule.parse(args.schedule) if args.schedule else None
    results = run_checks(model, processor, image, args.max_new_tokens, schedule, args.repeats)
    print(format_table(f"{args.model} ({model.dtype}, {device}, image {image.width}×{image.height})", results))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "device": device, "dtype": str(model.dtype),
                                         "results": [asdict(r) for r in results]}, indent=1))
    return EXIT_FAILED if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
