"""What an lmms-eval run under v2drop reports: vision tokens kept, prefill time, peak memory.

Every batch the model runs leaves a :class:`v2drop.Trace`. :class:`EvalStats` sums what the paper's
efficiency table needs over the batches of one process; :meth:`EvalStats.merged` adds the
processes of a data-parallel run together, so that the figures lmms-eval writes cover the
whole benchmark rather than rank 0's share of it. Plain Python, no torch and no lmms-eval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from ..trace import Trace

__all__ = ["EvalStats"]

_MB = 2 ** 20


@dataclass
class EvalStats:
    """Sums over the samples (and batches) that one or more processes ran."""

    samples: int = 0                  # real samples, padding requests excluded
    vision_tokens: int = 0            # vision tokens in the inputs, summed over samples
    vision_tokens_kept: float = 0.0   # layer-averaged alive vision tokens, summed over samples
    prefill_seconds: float = 0.0      # prompt forward passes, summed over batches
    generate_seconds: float = 0.0     # whole generate / forward calls, summed over batches
    generated_tokens: int = 0         # new tokens of the real samples
    peak_memory_bytes: int = 0        # the largest peak any batch reached
    memory_kind: str = ""             # "cuda_max_allocated" or "process_rss"
    processes: int = 1

    def add(self, trace: Trace, real: Sequence[bool], generate_seconds: float, generated_tokens: int) -> None:
        """Count one batch. ``real[b]`` is False for the padding requests lmms-eval adds so that
        every rank runs as many batches; their time is spent, but they are not samples."""
        for sample, is_real in zip(trace.samples, real):
            if not is_real:
                continue
            self.samples += 1
            self.vision_tokens += sample.num_vision_tokens
            alive = sample.alive_per_layer
            self.vision_tokens_kept += sum(alive) / len(alive) if alive else 0.0
        self.prefill_seconds += trace.prefill_seconds
        self.generate_seconds += generate_seconds
        self.generated_tokens += generated_tokens
        if trace.peak_memory_bytes is not None and trace.peak_memory_bytes >= self.peak_memory_bytes:
            self.peak_memory_bytes = trace.peak_memory_bytes
            self.memory_kind = trace.memory_kind

    @classmethod
    def merged(cls, parts: Iterable["EvalStats"]) -> "EvalStats":
        """One process's view of a data-parallel run: sums of counts and times, the largest peak."""
        parts = list(parts)
        total = cls(processes=len(parts))
        for part in parts:
            total.samples += part.samples
            total.vision_tokens += part.vision_tokens
            total.vision_tokens_kept += part.vision_tokens_kept
            total.prefill_seconds += part.prefill_seconds
            total.generate_seconds += part.generate_seconds
            total.generated_tokens += part.generated_tokens
            if part.peak_memory_bytes >= total.peak_memory_bytes:
                total.peak_memory_bytes = part.peak_memory_bytes
                total.memory_kind = part.memory_kind or total.memory_kind
        return total

    def metrics(self) -> dict[str, float]:
        """The numbers handed to lmms-eval's ``log_metrics`` (it reports each as ``avg_<name>``).

        ``vision_tokens_kept`` is the paper's "retained tokens": per sample, the vision tokens
        each decoder layer processed, averaged over layers; then averaged over samples."""
        n = max(self.samples, 1)
        return {
            "samples": float(self.samples),
            "processes": float(self.processes),
            "vision_tokens": self.vision_tokens / n,
            "vision_tokens_kept": self.vision_tokens_kept / n,
            "vision_kept_share": self.vision_tokens_kept / self.vision_tokens if self.vision_tokens else 1.0,
            "prefill_seconds_total": self.prefill_seconds,
            "prefill_ms_per_sample": 1000.0 * self.prefill_seconds / n,
            "peak_memory_mb": self.peak_memory_bytes / _MB,
        }
