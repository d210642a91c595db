"""Batch throughput: images per second at batch 1, 4 and 8, unpruned and under V²Drop, on batches
of images of one size and of mixed sizes with the same total number of vision tokens.

    python -m benchmarks.throughput --model qwen2-vl-2b --grid 8 --repeats 2 --out docs/bench
    python -m benchmarks.bench --model qwen2-vl-2b --throughput ...      # the same, from the benchmark

A workload is ``--images`` prompts (8), each one image, answered with ``--max-new-tokens`` forced
greedy tokens. The *same-size* set gives every image a ``grid × grid`` token grid; the *mixed* set
gives the images ``rows × grid`` grids whose rows differ (e.g. 4 … 12 for grid 8) and sum to the
same total, so both sets carry the same vision tokens and only the raggedness differs. A workload
at batch size ``b`` runs ``images / b`` left-padded ``generate`` calls; throughput = images / wall
time of the whole workload (CPU time is recorded too: on a shared machine it counts the work done).
Configurations run round-robin ``--repeats`` times after ``--warmup`` rounds; medians are reported.

Where padding costs. An unpruned mixed batch pads every prompt to the longest one, in every layer.
Under V²Drop the layers before the first drop pay the same; the first drop removes the prompts'
padding with the dropped tokens, and each sample keeps ⌊n_i × r⌋ of its own tokens, so from then
on the batch is as wide as the sample that keeps most (the others get masked filler slots):
``padding_share`` is the share of token slots, summed over all layers and samples, that hold
padding or fillers.

Targets (reported, not asserted): mixed / same-size throughput of V²Drop at batch 8 ≥ 0.9, and
V²Drop's speed-up over unpruned at batch 8 within 10 % of its speed-up at batch 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from v2drop import apply
from v2drop.schedule import DropSchedule

__all__ = ["image_sets", "qwen_batch", "run_throughput", "throughput_table", "targets", "main"]

BATCH_SIZES = (1, 4, 8)


def image_sets(grid: int, images: int = 8) -> dict[str, list[tuple[int, int]]]:
    """Token grids (rows, cols) of the same-size and the mixed-size set: equal totals, the mixed
    rows spread evenly from grid/2 to 3·grid/2 (then nudged so that they sum to images × grid)."""
    low, high = max(1, grid // 2), grid + grid // 2
    rows = [round(low + (high - low) * i / max(1, images - 1)) for i in range(images)]
    rows[-1] += images * grid - sum(rows)
    return {"same": [(grid, grid)] * images, "mixed": [(r, grid) for r in rows]}


def qwen_batch(model: torch.nn.Module, grids: Sequence[tuple[int, int]], prefix: int = 6, suffix: int = 10,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """A left-padded Qwen2-VL batch, one image per prompt with token grid ``grids[i]`` (rows, cols):
    random text ids around ``<vision_start> image tokens <vision_end>``, random pixels."""
    config = model.config
    g = torch.Generator().manual_seed(seed)
    rows = []
    for h, w in grids:
        text = lambda n: torch.randint(10, 150_000, (n,), generator=g)  # noqa: E731
        rows.append(torch.cat([text(prefix), torch.tensor([config.vision_start_token_id]),
                               torch.full((h * w,), config.image_token_id),
                               torch.tensor([config.vision_end_token_id]), text(suffix)]))
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)                     # (B, L), pad id 0
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, width - len(r):], mask[b, width - len(r):] = r, 1
    patch_dim = 3 * 2 * 14 * 14
    pixels = torch.cat([torch.randn(4 * h * w, patch_dim, generator=g) for h, w in grids])  # merge 2: 4 patches/token
    return dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == config.image_token_id).int(),
                pixel_values=pixels, image_grid_thw=torch.tensor([[1, 2 * h, 2 * w] for h, w in grids]))


def _workload(model, batches: list[dict], schedule: DropSchedule | None, new_tokens: int) -> dict:
    """Run every batch of a workload once; wall and CPU seconds and the padding share."""
    slots = real = 0
    _sync(model)
    start, start_cpu = time.perf_counter(), time.process_time()
    for inputs in batches:
        session = apply(model, schedule) if schedule is not None else contextlib.nullcontext()
        with session as run, torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0)
        s, r = _padding(inputs, run.trace if run is not None else None, model)
        slots, real = slots + s, real + r
    _sync(model)
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - start_cpu,
            "padding_share": 1 - real / slots if slots else 0.0}


def _sync(model: torch.nn.Module) -> None:
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()


def _padding(inputs: dict, trace: Any, model: torch.nn.Module) -> tuple[int, int]:
    """(token slots, real tokens) of one prefill, summed over the decoder layers."""
    layers = model.config.get_text_config().num_hidden_layers
    mask = inputs["attention_mask"]
    lengths = mask.sum(1).tolist()                                            # real tokens per sample
    if trace is None:
        return layers * mask.numel(), layers * sum(lengths)
    slots = real = 0
    dropped = False                        # the first drop also removes the prompts' padding
    for layer in range(layers):
        per = [n - s.num_vision_tokens + s.alive_per_layer[layer] for n, s in zip(lengths, trace.samples)]
        dropped = dropped or any(s.alive_per_layer[layer] < s.num_vision_tokens for s in trace.samples)
        slots += len(per) * (max(per) if dropped else mask.shape[1])
        real += sum(per)
    return slots, real


def run_throughput(model, grid: int, schedule: DropSchedule, images: int = 8, batch_sizes=BATCH_SIZES,
                   repeats: int = 2, warmup: int = 1, new_tokens: int = 4, log=print) -> list[dict]:
    """Every (set, batch size, method) workload, round-robin; one row each with medians. Inputs go
    to the model's device, pixels in its dtype."""
    param = next(model.parameters())
    place = lambda batch: {k: v.to(param.device, param.dtype if k == "pixel_values" else v.dtype)  # noqa: E731
                           for k, v in batch.items()}
    configs = []
    for set_name, grids in image_sets(grid, images).items():
        for size in batch_sizes:
            batches = [place(qwen_batch(model, grids[i:i + size], seed=i)) for i in range(0, images, size)]
            for method, sched in (("none", None), ("v2drop", schedule)):
                configs.append(dict(set=set_name, batch_size=size, method=method, batches=batches, schedule=sched,
                                    vision_tokens=sum(h * w for h, w in grids)))
    runs: list[list[dict]] = [[] for _ in configs]
    for rep in range(warmup + repeats):
        for i, c in enumerate(configs):
            result = _workload(model, c["batches"], c["schedule"], new_tokens)
            if rep >= warmup:
                runs[i].append(result)
        log(f"  throughput round {rep + 1}/{warmup + repeats} done" + (" (warm-up)" if rep < warmup else ""))
    rows = []
    for c, rs in zip(configs, runs):
        wall, cpu = statistics.median(r["wall_s"] for r in rs), statistics.median(r["cpu_s"] for r in rs)
        rows.append(dict(set=c["set"], batch_size=c["batch_size"], method=c["method"],
                         schedule=str(c["schedule"]) if c["schedule"] else "none", images=images,
                         vision_tokens=c["vision_tokens"], wall_s=wall, cpu_s=cpu, images_per_s=images / wall,
                         images_per_cpu_s=images / cpu, padding_share=rs[0]["padding_share"],
                         wall_runs_s=[r["wall_s"] for r in rs]))
    return rows


def _row(rows: list[dict], set_name: str, size: int, method: str) -> dict | None:
    return next((r for r in rows if (r["set"], r["batch_size"], r["method"]) == (set_name, size, method)), None)


def targets(rows: list[dict], key: str = "images_per_s") -> dict[str, float | None]:
    """The two targets: V²Drop mixed/same throughput at the largest batch, and, per set, V²Drop's
    speed-up over unpruned at the largest batch divided by its speed-up at batch 1."""
    big = max(r["batch_size"] for r in rows)
    out: dict[str, float | None] = {}
    mixed, same = _row(rows, "mixed", big, "v2drop"), _row(rows, "same", big, "v2drop")
    out[f"mixed_over_same_b{big}"] = mixed[key] / same[key] if mixed and same else None
    for set_name in ("same", "mixed"):
        speedups = {}
        for size in (1, big):
            v, n = _row(rows, set_name, size, "v2drop"), _row(rows, set_name, size, "none")
            speedups[size] = v[key] / n[key] if v and n else None
        out[f"speedup_{set_name}_b1"], out[f"speedup_{set_name}_b{big}"] = speedups[1], speedups[big]
        out[f"speedup_ratio_{set_name}"] = (speedups[big] / speedups[1]) if speedups[1] and speedups[big] else None
    return out


def throughput_table(rows: list[dict]) -> str:
    head = ["set", "batch", "method", "images/s (wall)", "images/s (CPU time)", "V²Drop speed-up (wall)",
            "padding % of slots"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        base = _row(rows, r["set"], r["batch_size"], "none")
        speedup = r["images_per_s"] / base["images_per_s"] if r["method"] != "none" and base else None
        lines.append("| " + " | ".join([
            r["set"], str(r["batch_size"]), r["method"], f"{r['images_per_s']:.3f}", f"{r['images_per_cpu_s']:.3f}",
            "-" if speedup is None else f"{speedup:.2f}×", f"{100 * r['padding_share']:.1f}",
        ]) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2-vl-2b", help="a qwen2_vl spec of benchmarks.models")
    ap.add_argument("--grid", type=int, default=8, help="token grid side of the same-size images")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--schedule", default="qwen2-vl-official", help="preset or stages (scaled to the depth)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. 'shared machine')")
    return ap


def main(argv: list[str] | None = None) -> dict:
    from benchmarks import models as bench_models

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model, spec = bench_models.build(args.model)
    if spec.family != "qwen2_vl":
        raise SystemExit("the throughput benchmark needs a qwen2_vl model (dynamic resolution: mixed sizes)")
    model = model.to(args.device)
    depth = model.config.get_text_config().num_hidden_layers
    text = args.schedule
    schedule = DropSchedule.preset(text) if text in DropSchedule.preset_names() else DropSchedule.parse(text)
    if max(layer for layer, _ in schedule.stages) >= depth:
        schedule = schedule.scaled_to(depth)
    rows = run_throughput(model, args.grid, schedule, args.images, repeats=args.repeats, warmup=args.warmup,
                          new_tokens=args.max_new_tokens)
    result = {"info": dict(model=args.model, description=spec.description, grid=args.grid, images=args.images,
                           sets={k: v for k, v in image_sets(args.grid, args.images).items()},
                           schedule=str(schedule), new_tokens=args.max_new_tokens, threads=args.threads,
                           device=args.device, torch=torch.__version__, dtype="float32", note=args.note,
                           command=" ".join(["python -m benchmarks.throughput",
                                             *(argv if argv is not None else sys.argv[1:])])),
              "rows": rows, "targets": targets(rows), "targets_cpu_time": targets(rows, "images_per_cpu_s")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"throughput-{args.model}.json").write_text(json.dumps(result, indent=1))
    print(throughput_table(rows))
    print(json.dumps(result["targets"], indent=1))
    return result


if __name__ == "__main__":
    main()
