"""Latency benchmark of the side-by-side chat on the embedded model (not a timed test).

    python -m studio.perf                 # in process: the model-side loop the app runs
    python -m studio.perf --app http://127.0.0.1:7860/   # through a running app (gradio_client)
    python app.py --benchmark                # same as the first

Prints, per example question, the time to the first token of the unpruned answer and of the V²Drop
answer and the time to the full pair, then the medians, and writes JSON (``--json``, default
results/perf.json). In process, each answer's time to first token is its own (its inputs and its
prefill: the V²Drop prefill runs after the unpruned one, and is not charged for it); the JSON also
keeps when each first token was shown (``first_shown_*``, wall clock since the request). Through a
running app only the shown times can be seen: there ``first_token_*`` are those.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"


def _questions() -> list[tuple[str, str]]:
    data = json.loads((EXAMPLES / "shapes_questions.json").read_text())
    return [(str(EXAMPLES / name), item["question"]) for name, item in data.items()]


def bench_in_process(repeats: int, schedule: str, max_new_tokens: int) -> dict:
    import torch

    from studio.inputs import load_image
    from studio.pair import stream_pair
    from studio.registry import ModelRegistry

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    entry = ModelRegistry().embedded()
    load_s = time.perf_counter() - t0
    runs = []
    cases = _questions()
    # warm-up (the app does the same at start-up)
    image, _ = load_image(cases[0][0])
    for _ in stream_pair(entry.model, entry.processor, image, cases[0][1], [], [], schedule, max_new_tokens=2):
        pass
    for _ in range(repeats):
        for path, question in cases:
            image, _ = load_image(path)
            start = time.perf_counter()
            first_full = first_drop = None
            for event in stream_pair(entry.model, entry.processor, image, question, [], [], schedule,
                                     max_new_tokens=max_new_tokens):
                now = time.perf_counter() - start
                if first_full is None and event.full.tokens:
                    first_full = now
                if first_drop is None and event.drop.tokens:
                    first_drop = now
            # each run's own time to first token (its inputs + prefill; the other run's work excluded),
            # and when each first token was shown (wall clock since the request, the runs interleaved)
            runs.append({"image": Path(path).name, "question": question,
                         "first_token_unpruned_s": event.full.first_token_seconds,
                         "first_token_v2drop_s": event.drop.first_token_seconds,
                         "first_shown_unpruned_s": first_full, "first_shown_v2drop_s": first_drop,
                         "full_pair_s": time.perf_counter() - start,
                         "answer_unpruned": event.full_text, "answer_v2drop": event.drop_text,
                         "prefill_unpruned_s": event.full.prefill_seconds,
                         "prefill_v2drop_s": event.drop.prefill_seconds,
                         "tokens_unpruned": event.full.tokens, "tokens_v2drop": event.drop.tokens})
    return {"mode": "in-process", "model": entry.model_id, "trained": entry.trained, "load_s": load_s, "runs": runs}


def bench_app(url: str, repeats: int, schedule: str) -> dict:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    client.predict(schedule, api_name="/set_schedule")
    runs = []
    for _ in range(repeats):
        for path, question in _questions():
            start = time.perf_counter()
            job = client.submit(question, handle_file(path), api_name="/chat")
            first_full = first_drop = None
            seen = 0
            while not job.done() or seen < len(job.outputs()):
                outs = job.outputs()
                for out in outs[seen:]:
                    now = time.perf_counter() - start
                    full, drop = out[0], out[1]
                    if first_full is None and full and _answer(full[-1]):
                        first_full = now
                    if first_drop is None and drop and _answer(drop[-1]):
                        first_drop = now
                seen = len(outs)
                time.sleep(0.005)
            job.result()
            runs.append({"image": Path(path).name, "question": question, "first_token_unpruned_s": first_full,
                         "first_token_v2drop_s": first_drop, "full_pair_s": time.perf_counter() - start})
    return {"mode": "app", "url": url, "runs": runs}


def _answer(message: dict) -> bool:
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
    return message.get("role") == "assistant" and bool(content) and content != "…"


def summarise(result: dict) -> dict:
    out = {}
    for key in ("first_token_unpruned_s", "first_token_v2drop_s", "first_shown_unpruned_s", "first_shown_v2drop_s",
                "full_pair_s"):
        values = [r[key] for r in result["runs"] if r.get(key) is not None]
        if values:
            out[key] = {"median": statistics.median(values), "max": max(values), "n": len(values)}
    result["summary"] = out
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", default=None, help="measure through a running app at this URL")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--schedule", default="2:0.6,4:0.5,6:0.3")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", default=str(ROOT / "results" / "perf.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    result = bench_app(args.app, args.repeats, args.schedule) if args.app else \
        bench_in_process(args.repeats, args.schedule, args.max_new_tokens)
    result["schedule"] = args.schedule
    summarise(result)
    for run in result["runs"]:
        print(f"{run['image']:24s} first token unpruned {run['first_token_unpruned_s'] or float('nan'):6.3f} s | "
              f"V²Drop {run['first_token_v2drop_s'] or float('nan'):6.3f} s | full pair {run['full_pair_s']:6.3f} s")
    for key, value in result["summary"].items():
        print(f"median {key}: {value['median']:.3f} s (max {value['max']:.3f} s, n={value['n']})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
