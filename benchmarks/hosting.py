"""Can a CPU host serve a suggested model? Time to the first tokens of both answers, as the app
streams them, for real-size random-weight fixtures of the suggested checkpoints.

    python -m benchmarks.hosting --models llava-onevision-0.5b --cap base --threads 2 --out docs/bench/hosting-cpu.json
    python -m benchmarks.hosting --models all --cap base --dtype bfloat16 --repeats 1

Per model (``benchmarks.checkpoints`` at ``size="real"``: the real config, processor and
parameter count; random weights, so the answers are noise) and per image cap
(``v2drop.resolution``): ``studio.pair.stream_pair`` on a 640×480 photo (scikit-image's
"coffee", resized), the unpruned answer and V²Drop under the paper's 192-token schedule scaled to
the model's depth, exactly as the app runs them. Reported: seconds from the call to the first
token of the unpruned answer and to the first token of the V²Drop answer (= both answers
started: processor, one shared vision-tower pass, two prefills), the process CPU time to the same
points (CPU-seconds of work: on a quiet host with ``--threads`` cores, wall ≈ CPU / threads when
both threads stay busy), the vision-token count, the process's peak RSS (model included) and the
machine's load average, which matters on a shared host.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks import checkpoints
from v2drop.adapters import decoder_depth, get_adapter
from v2drop.memory import peak_rss
from v2drop.resolution import apply_cap
from v2drop.schedule import DropSchedule

__all__ = ["time_first_tokens", "measure_model", "main", "photo"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def photo(size: tuple[int, int] = (640, 480)) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee()).convert("RGB").resize(size, Image.Resampling.BICUBIC)


def time_first_tokens(model: torch.nn.Module, processor: Any, image: Image.Image, schedule: DropSchedule) -> dict:
    """Seconds to the unpruned answer's first token and to V²Drop's, one ``stream_pair`` call."""
    from studio.pair import stream_pair

    start, cpu_start = time.perf_counter(), time.process_time()
    events = stream_pair(model, processor, image, "What is in this image?", [], [], schedule, max_new_tokens=1,
                         trace_all_layers=False)
    marks, cpu = [], []
    for _ in events:
        marks.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        if len(marks) == 2:
            break
    events.close()
    return {"unpruned_first_token_s": marks[0], "both_first_tokens_s": marks[1],
            "unpruned_first_token_cpu_s": cpu[0], "both_first_tokens_cpu_s": cpu[1]}


def measure_model(name: str, cap: str, dtype: torch.dtype, repeats: int, size: str = "real") -> dict:
    """Build fixture ``name`` (real size unless ``size="narrow"``, for tests), set ``cap``, and time
    ``repeats`` pairs after a cold one."""
    t0 = time.perf_counter()
    model, processor = checkpoints.build(name, size=size, dtype=dtype)
    build_s = time.perf_counter() - t0
    applied = apply_cap(model, processor, cap)
    image = photo()
    inputs = processor(images=[image], text=[processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
        add_generation_prompt=True, tokenize=False)], return_tensors="pt")
    vision = int(torch.isin(inputs["input_ids"], torch.tensor(get_adapter(model).vision_token_ids())).sum())
    schedule = DropSchedule.preset("llava-1.5-192").scaled_to(decoder_depth(model))
    runs = [time_first_tokens(model, processor, image, schedule) for _ in range(repeats + 1)]
    timed = runs[1:] or runs
    return {
        "model": name, "hub_id": checkpoints.spec(name)["hub_id"], "cap": cap, "cap_label": applied.label,
        "dtype": str(dtype).replace("torch.", ""), "parameters": sum(p.numel() for p in model.parameters()),
        "vision_tokens": vision, "schedule": str(schedule), "build_s": round(build_s, 1),
        "cold": runs[0], "runs": timed,
        "both_first_tokens_median_s": statistics.median(r["both_first_tokens_s"] for r in timed),
        "unpruned_first_token_median_s": statistics.median(r["unpruned_first_token_s"] for r in timed),
        "both_first_tokens_cpu_median_s": statistics.median(r["both_first_tokens_cpu_s"] for r in timed),
        "peak_rss_bytes": peak_rss(), "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hosting", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["llava-onevision-0.5b"], help="fixture names, or all")
    parser.add_argument("--cap", default="base", choices=["full", "base"])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = checkpoints.NAMES if args.models == ["all"] else args.models
    results = []
    for name in names:
        results.append(measure_model(name, args.cap, DTYPES[args.dtype], args.repeats))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threads": args.threads, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
