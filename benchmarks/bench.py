"""Speed, memory, accuracy and positional bias of V²Drop and the baselines, side by side.

    python -m benchmarks.bench --model onevision-0.5b --repeats 3 --max-new-tokens 4 --out results/bench
    python -m benchmarks.bench --model qwen2-vl-2b --schedules paper-192 --repeats 1 --out results/bench
    python -m benchmarks.bench --model shapes --accuracy --n 300 --out results/bench

Speed and memory (every ``--model``). One process loads the model once; every configuration
(``none``, V²Drop at each schedule, each baseline at the same layer-averaged budget) is run
``--warmup`` times and then ``--repeats`` times round-robin, so that a noisy machine slows every
method alike; medians are reported. Per run: the language model's prefill time and its mean
per-token decode time (forward hooks on the language model: the vision tower is not timed), the
whole ``generate`` wall time, the KV-cache size, the peak memory above the loaded model (CPU:
peak RSS ``VmHWM``, reset through ``/proc/self/clear_refs`` before each run, minus the RSS
before it; the command re-executes itself with a fixed glibc mmap threshold so that freed
tensors go back to the OS; CUDA: ``max_memory_allocated`` minus the allocated memory before),
V²Drop's scoring time against the engine's prefill time, and the FLOPs-predicted prefill
speed-up (``DropSchedule.flops_ratio``) next to the measured one.

Budgets. V²Drop's schedule fixes the layer-averaged share of vision tokens; each baseline runs
its own kind of schedule at that share: ``fastv`` / ``fastv-lite`` one stage at layer
``round(3·N/32)`` (FastV's code: K=3 of 32 layers), ``pdrop`` stages at N/4, N/2, 3N/4 with one
shared ratio (PyramidDrop's layout), ``random`` / ``uniform`` V²Drop's own schedule (only the
choice of tokens differs), ``downsample`` ``0:share`` (pooling before layer 0). When a budget is
out of a layout's reach the first stage moves earlier; the table shows every schedule used.

Batch throughput (``--throughput``, Qwen2-VL models): images/s at batch 1, 4 and 8, unpruned and
V²Drop, on same-size and mixed-size images with equal total tokens; see ``benchmarks.throughput``.

Accuracy (``--accuracy``, ``--model shapes`` only): ``shapes.evaluate.evaluate`` on the
held-out benchmark ``shapes.scenes.benchmark(n)``, every method at every budget, with the
share of the unpruned accuracy kept ("relative performance"). The same runs give the positional
bias (paper Fig. 2): per bin of the vision-token index, the share of tokens kept at the FIRST
drop layer of each method, and the layer-averaged share (the mean over the N layers of "alive at
that layer"). Everything goes to ``--out`` as JSON, plotly HTML and a markdown report.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from v2drop import compat
from v2drop.adapters import adapter_class, decoder_depth
from v2drop.memory import module_device, peak_rss, process_rss, reset_peak_rss
# the baselines' schedule rules live in the library (the app uses them too); re-exported here
from v2drop.schedule import PRESETS, DropSchedule, fastv_layer, matched_schedule, pdrop_layers  # noqa: F401

__all__ = ["main", "matched_schedule", "paper_schedules", "run_speed", "run_accuracy", "fastv_layer"]

DEFAULT_METHODS = ("none", "v2drop", "fastv", "fastv-lite", "pdrop", "random", "uniform", "downsample")
ACCURACY_METHODS = ("none", "v2drop", "fastv", "pdrop", "random", "uniform", "downsample")  # fastv-lite = fastv's tokens
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
SHAPES_PRESETS = ("shapes-50%", "shapes-33%", "shapes-15%")


# ----------------------------------------------------------------------------- schedules
def paper_schedules(num_layers: int, own_presets: Sequence[str] = ()) -> dict[str, DropSchedule]:
    """The paper's LLaVA-1.5 budgets (``paper-192/128/64``) with their drop layers scaled to
    ``num_layers`` (:meth:`DropSchedule.scaled_to`), then the model family's own presets that
    differ from them (e.g. ``qwen2-vl-official``)."""
    out = {f"paper-{b}": DropSchedule.preset(f"llava-1.5-{b}").scaled_to(num_layers) for b in (192, 128, 64)}
    texts = {str(schedule) for schedule in out.values()}
    for name in own_presets:
        if str(DropSchedule.preset(name)) not in texts:
            out[name] = DropSchedule.preset(name)
    return out


def default_schedules(model: torch.nn.Module, info: dict) -> dict[str, DropSchedule]:
    """The schedules a run uses when ``--schedules`` is not given: the embedded model's own
    presets, or :func:`paper_schedules` with the family's presets."""
    if info["model"] == "shapes":
        return {name: DropSchedule.preset(name) for name in SHAPES_PRESETS}
    family = adapter_class(model)
    own = family.own_presets(info["num_layers"]) if family is not None else ()
    return paper_schedules(info["num_layers"], own)


# ----------------------------------------------------------------------------- measuring
class LLMTimer:
    """Wall and process-CPU time of every forward of the language model (prefill = the first of a
    generate). ``clock="cpu"`` reports CPU time: on a shared machine with one torch thread it
    measures the work done rather than the scheduler's share."""

    def __init__(self, module: torch.nn.Module, cuda: bool, clock: str = "wall") -> None:
        self.cuda, self.calls, self.wall, self.cpu, self.clock = cuda, [], [], [], clock
        self._t = self._c = 0.0
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _pre(self, *_):
        self._sync()
        self._t, self._c = time.perf_counter(), time.process_time()

    def _post(self, *_):
        self._sync()
        self.wall.append(time.perf_counter() - self._t)
        self.cpu.append(time.process_time() - self._c)
        self.calls.append(self.cpu[-1] if self.clock == "cpu" else self.wall[-1])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def run_once(model, inputs: dict, method: str, schedule: DropSchedule | None, max_new_tokens: int,
             clock: str = "wall") -> dict:
    """One ``generate`` of ``max_new_tokens`` tokens (forced), measured (times in ``clock``)."""
    from v2drop import apply, get_method

    cuda = module_device(model).type == "cuda"
    rule = None if method == "none" else get_method(method)
    if hasattr(rule, "materialised_bytes"):
        rule.materialised_bytes = 0
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = process_rss() or 0
        reset_peak_rss()
    timer = LLMTimer(model.model.language_model, cuda, clock)
    session = contextlib.nullcontext() if method == "none" else apply(model, schedule, method=method)
    try:
        start, start_cpu = time.perf_counter(), time.process_time()
        with session as run, torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 do_sample=False, return_dict_in_generate=True)
        if cuda:
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        total_cpu = time.process_time() - start_cpu
    finally:
        timer.remove()
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss()
    kv = compat.kv_cache_bytes(getattr(out, "cache", None) or getattr(out, "past_key_values", None))
    del out
    trace = run.trace if run is not None else None
    decode = timer.calls[1:]
    return {
        "prefill_s": timer.calls[0],
        "decode_s_per_token": sum(decode) / len(decode) if decode else None,
        "generate_s": total_cpu if clock == "cpu" else total,
        "generate_wall_s": total,
        "prefill_wall_s": timer.wall[0],
        "prefill_cpu_s": timer.cpu[0],
        "peak_bytes": peak,
        "peak_extra_bytes": None if peak is None else peak - before,
        "kv_cache_bytes": kv,
        "scoring_s": trace.scoring_seconds if trace else 0.0,
        "engine_prefill_s": trace.prefill_seconds if trace else timer.calls[0],
        "attention_matrix_bytes": getattr(rule, "materialised_bytes", 0) if rule is not None else 0,
        "alive_per_layer": trace.samples[0].alive_per_layer if trace and trace.samples else None,
    }


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _load_shapes(device: str, shapes_random: bool, weights: str | None):
    from shapes import model as shapes_model

    if weights and os.path.isfile(weights):  # a training checkpoint (torch.save dict with "model")
        model, processor = shapes_model.build_model(seed=0), shapes_model.build_processor()
        state = torch.load(weights, map_location="cpu", weights_only=False)
        model.load_state_dict(state.get("model", state))
        step = state.get("step", "?") if isinstance(state, dict) else "?"
        return model.to(device).eval(), processor, f"checkpoint {weights} (step {step})"
    try:
        if shapes_random:
            raise FileNotFoundError("random weights requested")
        model, processor = shapes_model.load_default(device, model_dir=weights)
        return model, processor, f"trained ({weights or 'assets/shapes-llava'})"
    except FileNotFoundError:
        model, processor = shapes_model.build_model(seed=0), shapes_model.build_processor()
        return model.to(device).eval(), processor, "RANDOM (no trained weights found)"


def load_bench_model(name: str, device: str = "cpu", shapes_random: bool = False, shapes_weights: str | None = None):
    """(model, processor or None, inputs, info) for a ``--model`` name."""
    if name == "shapes":
        from shapes import evaluate as shapes_eval
        from shapes import model as shapes_model
        from shapes import scenes

        model, processor, weights = _load_shapes(device, shapes_random, shapes_weights)
        sample = scenes.benchmark(1)[0]
        inputs = shapes_eval.build_inputs(processor, [sample.image], [sample.question]).to(device)
        n_vis = shapes_model.NUM_VISION_TOKENS
        info = dict(model="shapes", description=f"embedded Shapes LLaVA, weights {weights}", weights=weights)
    else:
        from benchmarks import models as bench_models

        model, spec = bench_models.build(name)
        model = model.to(device)
        processor = None
        inputs = {k: v.to(device) for k, v in bench_models.make_inputs(model, spec).items()}
        n_vis = spec.num_vision_tokens
        info = dict(model=name, description=spec.description, weights="random")
    text = model.config.text_config
    n_text = int(inputs["input_ids"].shape[1]) - n_vis
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    info.update(num_layers=decoder_depth(model), num_vision_tokens=n_vis, num_text_tokens=n_text,
                hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
                kv_hidden_size=text.num_key_value_heads * head_dim,
                parameters=sum(p.numel() for p in model.parameters()))
    return model, processor, inputs, info


def _configs(methods: list[str], schedules: dict[str, DropSchedule], info: dict) -> list[dict]:
    n, layers = info["num_vision_tokens"], info["num_layers"]
    configs = []
    if "none" in methods:
        configs.append(dict(method="none", budget_name="-", schedule=None, note=None))
    for budget_name, reference in schedules.items():
        for method in methods:
            if method == "none":
                continue
            schedule, note = matched_schedule(method, reference, layers, n)
            configs.append(dict(method=method, budget_name=budget_name, schedule=schedule, note=note))
    for c in configs:
        sched = c["schedule"]
        if sched is None:
            c.update(avg_kept=float(n), flops_ratio=1.0)
        else:
            c.update(avg_kept=sched.average_kept(layers, n), flops_ratio=sched.flops_ratio(
                layers, n, info["num_text_tokens"], info["hidden_size"], info["intermediate_size"],
                kv_hidden_size=info["kv_hidden_size"]))
    return configs


def run_speed(model, inputs, info: dict, methods: list[str], schedules: dict[str, DropSchedule],
              repeats: int = 3, warmup: int = 1, max_new_tokens: int = 4, log=print,
              clock: str = "wall") -> list[dict]:
    configs = _configs(methods, schedules, info)
    runs: list[list[dict]] = [[] for _ in configs]
    for rep in range(warmup + repeats):
        for i, c in enumerate(configs):
            result = run_once(model, inputs, c["method"], c["schedule"], max_new_tokens, clock)
            if rep >= warmup:
                runs[i].append(result)
        log(f"  round {rep + 1}/{warmup + repeats} done" + (" (warm-up)" if rep < warmup else ""))
    rows = []
    for c, rs in zip(configs, runs):
        row = {k: c[k] for k in ("method", "budget_name", "note", "avg_kept", "flops_ratio")}
        row["schedule"] = str(c["schedule"]) if c["schedule"] is not None else "none"
        for key in ("prefill_s", "prefill_wall_s", "prefill_cpu_s", "generate_wall_s", "decode_s_per_token",
                    "generate_s", "peak_bytes", "peak_extra_bytes",
                    "kv_cache_bytes", "scoring_s", "engine_prefill_s", "attention_matrix_bytes"):
            row[key] = _median([r[key] for r in rs])
        row["prefill_runs_s"] = [r["prefill_s"] for r in rs]
        row["alive_per_layer"] = rs[0]["alive_per_layer"] if rs else None
        rows.append(row)
    base = next((r for r in rows if r["method"] == "none"), None)
    for r in rows:
        r["budget_share"] = r["avg_kept"] / info["num_vision_tokens"]
        r["predicted_speedup"] = 1.0 / r["flops_ratio"] if r["flops_ratio"] else None
        # paired: the ratio within each round (same machine state), then the median over rounds
        r["measured_speedup"] = (_median([b / m for b, m in zip(base["prefill_runs_s"], r["prefill_runs_s"])])
                                 if base else None)
        r["measured_over_predicted"] = (r["measured_speedup"] / r["predicted_speedup"]
                                        if r["measured_speedup"] and r["predicted_speedup"] else None)
        r["scoring_share_of_prefill"] = (r["scoring_s"] / r["engine_prefill_s"]
                                         if r["method"] != "none" and r["engine_prefill_s"] else None)
        r["generate_speedup"] = base["generate_s"] / r["generate_s"] if base and r["generate_s"] else None
    return rows


# ----------------------------------------------------------------------------- accuracy + bias
class BiasCollector:
    """Retention per bin of the vision-token index, at the first drop layer and layer-averaged."""

    def __init__(self, num_vision_tokens: int, num_layers: int, bins: int) -> None:
        self.n, self.layers, self.bins = num_vision_tokens, num_layers, bins
        self.total = [0] * bins
        self.kept_first = [0] * bins
        self.alive_layers = [0.0] * bins
        self.first_layer: int | None = None

    def bin_of(self, ordinal: int) -> int:
        return min(self.bins - 1, ordinal * self.bins // self.n)

    def __call__(self, trace) -> None:
        for sample in trace.samples:
            if sample.num_vision_tokens != self.n or not sample.kept:
                continue
            first = min(sample.kept)
            self.first_layer = first
            kept = set(sample.kept[first])
            alive_count = [0] * self.n
            for layer in range(self.layers):
                for o in sample.alive_after(layer):
                    alive_count[o] += 1
            for o in range(self.n):
                b = self.bin_of(o)
                self.total[b] += 1
                self.kept_first[b] += int(o in kept)
                self.alive_layers[b] += alive_count[o] / self.layers

    def result(self) -> dict:
        return {
            "first_drop_layer": self.first_layer,
            "bin_edges": [b * self.n // self.bins for b in range(self.bins)] + [self.n],
            "retention_first_drop": [k / t if t else None for k, t in zip(self.kept_first, self.total)],
            "retention_layer_averaged": [a / t if t else None for a, t in zip(self.alive_layers, self.total)],
        }


def run_accuracy(model, processor, info: dict, methods: list[str], schedules: dict[str, DropSchedule],
                 n: int = 300, batch_size: int = 32, bins: int = 16, log=print) -> tuple[list[dict], dict]:
    from shapes import evaluate as shapes_eval
    from shapes import scenes

    questions = scenes.benchmark(n)
    layers, n_vis = info["num_layers"], info["num_vision_tokens"]
    rows, bias = [], {}
    base = None
    if "none" in methods:
        r = shapes_eval.evaluate(model, processor, questions, method="none", batch_size=batch_size)
        base = r["accuracy"]
        rows.append(dict(method="none", budget_name="-", schedule="none", avg_kept=float(n_vis),
                         accuracy=base, per_type=r["per_type"], n=r["n"], seconds=r["seconds"]))
        log(f"  none: {100 * base:.1f} %")
    for budget_name, reference in schedules.items():
        for method in methods:
            if method == "none":
                continue
            schedule, note = matched_schedule(method, reference, layers, n_vis)
            collector = BiasCollector(n_vis, layers, bins)
            r = shapes_eval.evaluate(model, processor, questions, method=method, schedule=schedule,
                                     batch_size=batch_size, on_trace=collector)
            rows.append(dict(method=method, budget_name=budget_name, schedule=str(schedule), note=note,
                             avg_kept=schedule.average_kept(layers, n_vis), accuracy=r["accuracy"],
                             per_type=r["per_type"], n=r["n"], seconds=r["seconds"],
                             **({"random_draws": r["random_draws"]} if "random_draws" in r else {})))
            bias.setdefault(budget_name, {})[method] = collector.result()
            log(f"  {method} @ {budget_name} ({schedule}): {100 * r['accuracy']:.1f} %")
    for r in rows:
        r["budget_share"] = r["avg_kept"] / n_vis
        r["relative"] = r["accuracy"] / base if base else None
    return rows, bias


# ----------------------------------------------------------------------------- output
def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.1f}"


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def speed_table(rows: list[dict]) -> str:
    head = ["method", "budget", "schedule", "avg vision tokens", "LLM prefill ms", "speed-up measured",
            "speed-up FLOPs", "measured / FLOPs", "decode ms/token", "generate s", "peak extra MB", "KV MB",
            "scoring % of prefill", "attn-matrix MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], r["budget_name"], r["schedule"], f"{r['avg_kept']:.1f}", _f(1e3 * r["prefill_s"], ".0f"),
            _f(r["measured_speedup"], ".2f"), _f(r["predicted_speedup"], ".2f"),
            _f(r["measured_over_predicted"], ".2f"),
            _f(None if r["decode_s_per_token"] is None else 1e3 * r["decode_s_per_token"], ".1f"),
            _f(r["generate_s"], ".2f"), _mb(r["peak_extra_bytes"]), _mb(r["kv_cache_bytes"]),
            _f(None if r["scoring_share_of_prefill"] is None else 100 * r["scoring_share_of_prefill"], ".3f"),
            _mb(r["attention_matrix_bytes"]) if r["attention_matrix_bytes"] else "-",
        ]) + " |")
    return "\n".join(lines)


def accuracy_table(rows: list[dict]) -> str:
    qtypes = sorted({t for r in rows for t in r["per_type"]})
    head = ["method", "budget", "schedule", "avg vision tokens", "accuracy %", "relative %"] + qtypes
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], r["budget_name"], r["schedule"], f"{r['avg_kept']:.1f}", f"{100 * r['accuracy']:.1f}",
            _f(None if r["relative"] is None else 100 * r["relative"], ".1f"),
        ] + [_f(100 * r["per_type"][t], ".1f") if t in r["per_type"] else "-" for t in qtypes]) + " |")
    return "\n".join(lines)


def bias_table(bias: dict) -> str:
    """Per budget and method: retention in the first and last quarter of the vision-token index
    (first drop layer and layer-averaged), and their ratio (1 = no positional bias)."""
    head = ["budget", "method", "first drop layer", "kept first 25 % (first drop)", "kept last 25 % (first drop)",
            "last / first", "layer-avg first 25 %", "layer-avg last 25 %", "last / first (layer-avg)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def quarter(values: list, last: bool) -> float | None:
        values = [v for v in values if v is not None]
        q = max(1, len(values) // 4)
        part = values[-q:] if last else values[:q]
        return sum(part) / len(part) if part else None

    for budget, methods in bias.items():
        for method, res in methods.items():
            cells = [budget, method, str(res["first_drop_layer"])]
            for key in ("retention_first_drop", "retention_layer_averaged"):
                lo, hi = quarter(res[key], False), quarter(res[key], True)
                cells += [_f(lo, ".3f"), _f(hi, ".3f"), _f(hi / lo if lo else None, ".2f")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_chart(rows: list[dict], info: dict, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("LLM prefill speed-up vs unpruned", "peak memory above model (MB)",
                                                         "decode ms / token"))
    budgets = [b for b in dict.fromkeys(r["budget_name"] for r in rows) if b != "-"]
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "none"))
    for m in methods:
        sel = [next((r for r in rows if r["method"] == m and r["budget_name"] == b), None) for b in budgets]
        fig.add_trace(go.Bar(name=m, x=budgets, y=[r and r["measured_speedup"] for r in sel], legendgroup=m), 1, 1)
        fig.add_trace(go.Bar(name=m, x=budgets, y=[r and (r["peak_extra_bytes"] or 0) / 2**20 for r in sel],
                             legendgroup=m, showlegend=False), 1, 2)
        fig.add_trace(go.Bar(name=m, x=budgets, y=[r and 1e3 * (r["decode_s_per_token"] or 0) for r in sel],
                             legendgroup=m, showlegend=False), 1, 3)
    v2 = [next((r for r in rows if r["method"] == "v2drop" and r["budget_name"] == b), None) for b in budgets]
    fig.add_trace(go.Scatter(name="FLOPs-predicted (V²Drop schedule)", x=budgets,
                             y=[r and r["predicted_speedup"] for r in v2], mode="markers+lines",
                             marker=dict(symbol="diamond", size=10, color="black")), 1, 1)
    base = next((r for r in rows if r["method"] == "none"), None)
    if base:
        fig.add_hline(y=(base["peak_extra_bytes"] or 0) / 2**20, line_dash="dot", annotation_text="unpruned", row=1, col=2)
        fig.add_hline(y=1e3 * (base["decode_s_per_token"] or 0), line_dash="dot", annotation_text="unpruned", row=1, col=3)
    fig.update_layout(barmode="group", title=f"{info['model']}: {info['description']}", height=480)
    fig.write_html(path, include_plotlyjs="cdn")


def bias_chart(bias: dict, info: dict, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    budgets = list(bias)
    fig = make_subplots(rows=len(budgets), cols=2, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[t for b in budgets for t in (f"{b}: kept at first drop layer",
                                                                      f"{b}: layer-averaged retention")])
    for i, b in enumerate(budgets, start=1):
        for method, res in bias[b].items():
            edges = res["bin_edges"]
            x = [f"{edges[j]}-{edges[j + 1] - 1}" for j in range(len(edges) - 1)]
            fig.add_trace(go.Scatter(name=method, x=x, y=res["retention_first_drop"], mode="lines+markers",
                                     legendgroup=method, showlegend=i == 1), i, 1)
            fig.add_trace(go.Scatter(name=method, x=x, y=res["retention_layer_averaged"], mode="lines+markers",
                                     legendgroup=method, showlegend=False), i, 2)
    fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(title=f"Positional bias on the {info['model']} benchmark: retention per vision-token-index bin",
                      height=320 * len(budgets))
    fig.write_html(path, include_plotlyjs="cdn")


# ----------------------------------------------------------------------------- CLI
def _parse_schedules(text: str | None, available: dict[str, DropSchedule]) -> dict[str, DropSchedule]:
    if not text:
        return available
    out = {}
    for item in text.split(";"):
        item = item.strip()
        if item in available:
            out[item] = available[item]
        elif item in PRESETS:
            out[item] = DropSchedule.preset(item)
        else:
            out[item] = DropSchedule.parse(item)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.bench``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes", help="shapes | onevision-0.5b | qwen2-vl-2b | tiny")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--schedules", default=None,
                    help="';'-separated V²Drop schedules (names like paper-192, presets or '2:0.5,13:0.3'); "
                         "default: the paper's schedules scaled to the model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--no-speed", action="store_true", help="skip the latency/memory part")
    ap.add_argument("--accuracy", action="store_true", help="accuracy + positional bias (shapes only)")
    ap.add_argument("--n", type=int, default=300, help="benchmark questions for --accuracy")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bins", type=int, default=16)
    ap.add_argument("--shapes-random", action="store_true", help="shapes with random weights (tests)")
    ap.add_argument("--shapes-weights", default=None,
                    help="shapes model folder, or a training checkpoint .pt (default: assets/shapes-llava)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time with the wall clock, or with process CPU time (use with --threads 1 on a "
                         "shared machine: it counts the work, not the scheduler's share)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("V2DROP_BENCH_THREADS", "2")))
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--throughput", action="store_true",
                    help="the batch-throughput table instead (benchmarks.throughput; qwen2_vl models)")
    ap.add_argument("--grid", type=int, default=8, help="--throughput: token grid side of the same-size images")
    return ap


def _speed_section(model, inputs, info: dict, methods: list[str], schedules: dict, args, out: Path, log) -> tuple:
    """Run the speed + memory benchmark; write its JSON and chart; ``(rows, report lines)``."""
    rows = run_speed(model, inputs, info, methods, schedules, args.repeats, args.warmup, args.max_new_tokens, log,
                     args.clock)
    table = speed_table(rows)
    log(table)
    (out / f"speed-{args.model}.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    speed_chart(rows, info, out / f"speed-{args.model}.html")
    report = [f"Speed and memory: medians of {args.repeats} runs after {args.warmup} warm-up, "
              f"{args.max_new_tokens} new tokens, {args.clock}-clock times.", "", table, ""]
    return rows, report


def _accuracy_section(model, processor, info: dict, methods: list[str], schedules: dict, args, out: Path,
                      log) -> tuple:
    """Run accuracy + positional bias on the embedded model; write JSON and chart;
    ``(rows, bias, report lines)``."""
    if args.model != "shapes" or processor is None:
        raise SystemExit("--accuracy needs --model shapes (the only model with a benchmark and trained weights)")
    acc_methods = [m for m in methods if m != "fastv-lite"]  # same tokens as fastv
    rows, bias = run_accuracy(model, processor, info, acc_methods, schedules, args.n, args.batch_size, args.bins, log)
    table, btable = accuracy_table(rows), bias_table(bias)
    log(table)
    (out / f"accuracy-{args.model}.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    (out / f"bias-{args.model}.json").write_text(json.dumps({"info": info, "bias": bias}, indent=1))
    bias_chart(bias, info, out / f"bias-{args.model}.html")
    log(btable)
    report = [f"Accuracy on {args.n} held-out questions (weights: {info.get('weights')}):", "", table, "",
              "Positional bias (retention by vision-token index quarter):", "", btable, ""]
    return rows, bias, report


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.throughput:
        from benchmarks import throughput

        return throughput.main(["--model", args.model, "--grid", str(args.grid), "--repeats", str(args.repeats),
                                "--warmup", str(args.warmup), "--max-new-tokens", str(args.max_new_tokens),
                                "--threads", str(args.threads), "--device", args.device, "--out", args.out])
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    model, processor, inputs, info = load_bench_model(args.model, args.device, args.shapes_random, args.shapes_weights)
    info.update(device=args.device, threads=args.threads, clock=args.clock, torch=torch.__version__, dtype="float32",
                command="python -m benchmarks.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                malloc_mmap_threshold=os.environ.get(MMAP_ENV))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    schedules = _parse_schedules(args.schedules, default_schedules(model, info))
    summary = (f"{info['description']}; {info['num_layers']} layers, {info['num_vision_tokens']} vision + "
               f"{info['num_text_tokens']} text tokens")
    log(f"{info['model']}: {summary}, {info['parameters'] / 1e6:.0f} M parameters")
    report = [f"## {info['model']}", "", f"`{info['command']}`", "",
              f"{summary}; {args.device}, {args.threads} threads, float32.", ""]
    result: dict[str, Any] = {"info": info}
    if not args.no_speed:
        result["speed"], lines = _speed_section(model, inputs, info, methods, schedules, args, out, log)
        report += lines
    if args.accuracy:
        result["accuracy"], result["bias"], lines = _accuracy_section(model, processor, info, methods, schedules,
                                                                      args, out, log)
        report += lines
    (out / f"report-{args.model}.md").write_text("\n".join(report))
    log(f"wrote {out}/")
    return result


def _reexec_with_fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold after large frees, which keeps freed tensors resident and
    makes RSS useless for per-run peaks: fix it (64 KiB) before the allocator starts."""
    if os.environ.get(MMAP_ENV) is None and sys.platform.startswith("linux"):
        env = dict(os.environ, **{MMAP_ENV: "65536", "MALLOC_TRIM_THRESHOLD_": "0"})
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.bench", *sys.argv[1:]], env)


if __name__ == "__main__":
    _reexec_with_fixed_mmap_threshold()
    main()
