"""Memory readings shared by the engine's trace, the app's chat runs and the benchmark."""

from __future__ import annotations

import os

import torch

__all__ = ["process_rss", "memory_now"]


def process_rss() -> int | None:
    """Resident set size of this process in bytes (Linux), or None where unreadable."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def memory_now(device: torch.device) -> tuple[int | None, str]:
    """``(bytes, kind)``: CUDA's peak allocation on a GPU, else the process RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    rss = process_rss()
    return rss, "process_rss" if rss is not None else ""
