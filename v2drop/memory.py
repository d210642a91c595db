"""Where a model lives and how much memory it uses: the one device helper and the memory readings
shared by the engine's trace, the app's chat runs and the benchmarks."""

from __future__ import annotations

import os

import torch

__all__ = ["module_device", "process_rss", "peak_rss", "reset_peak_rss", "memory_now"]


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (CPU for a module without parameters)."""
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def process_rss() -> int | None:
    """Resident set size of this process in bytes (Linux), or None where unreadable."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss() -> int | None:
    """Peak resident set size of this process (``VmHWM``) in bytes (Linux), or None where unreadable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Start :func:`peak_rss` over from the current RSS (Linux ``/proc/self/clear_refs``); False
    where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_now(device: torch.device) -> tuple[int | None, str]:
    """``(bytes, kind)``: CUDA's peak allocation on a GPU, else the process RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    rss = process_rss()
    return rss, "process_rss" if rss is not None else ""
