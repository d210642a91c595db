"""The operator's memory budget: a model that cannot fit is refused before anything is downloaded.

A model too large for the host does not raise ``MemoryError``: the kernel kills the whole process
(on a free CPU Space, LLaVA-1.5-7B would take every visitor's session with it). So every load is
checked against a budget first, from an estimate that needs no download and no cache lookup:

    need = 1.2 × parameters × bytes per weight (in the dtype the load will use) + 1.5 GB

The margin (20 % of the weights, plus 1.5 GB once for Python, torch, Gradio, the embedded model and
one run's activations at the ``base`` image cap) is stated in ``docs/app.md``; every peak RSS in
``docs/bench/hosting-cpu.json`` is below this estimate (``tests/test_memory_budget.py`` checks it).
The parameter counts of the suggested models are precomputed (:data:`PARAMETERS`, from the real-size
configs in ``benchmarks/checkpoints``, built on the meta device); for any other id the count comes
from its config.json alone (a few KB: an operator's folder, or the hub's file), built on the meta
device, or there is no estimate and the load goes on.

The budget is ``--memory-budget GB`` / ``V2DROP_MEMORY_BUDGET_GB``, by default the host's limit: the
cgroup's memory limit where there is one (v2 ``memory.max``, v1 ``memory.limit_in_bytes``), else the
memory available now (``MemAvailable``). GB here are 10⁹ bytes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["PARAMETERS", "GB", "host_limit", "parameter_count", "weight_bytes", "need_bytes", "MemoryBudget"]

log = logging.getLogger("v2drop.studio")
GB = 1e9
WEIGHT_MARGIN = 0.2      # transformers' load and the page cache of the weights, on top of the weights
RUNTIME_BYTES = 1.5 * GB  # Python, torch, Gradio, the embedded model, one run's activations (base cap)
_UNLIMITED = 1 << 60     # cgroup v1 writes "no limit" as a number near 2⁶³
# the suggested models, counted on the meta device from benchmarks/checkpoints/*.json at real size
PARAMETERS = {
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": 893_675_552,
    "Qwen/Qwen2-VL-2B-Instruct": 2_208_985_600,
    "Qwen/Qwen2.5-VL-3B-Instruct": 3_754_622_976,
    "llava-hf/llava-1.5-7b-hf": 7_063_427_072,
    "llava-hf/llava-v1.6-vicuna-7b-hf": 7_063_431_168,
}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_limit(root: Path, proc_cgroup: Path) -> int | None:
    """This process's cgroup memory limit in bytes (v2, then v1), or None where there is none."""
    own = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        for name in controllers.split(",") if controllers else [""]:
            own[name] = path.lstrip("/")
    candidates = [root / own.get("", "") / "memory.max", root / "memory.max",
                  root / "memory" / own.get("memory", "") / "memory.limit_in_bytes",
                  root / "memory" / "memory.limit_in_bytes"]
    for path in candidates:
        text = _read(path)
        if text and text != "max" and text.isdigit() and int(text) < _UNLIMITED:
            return int(text)
    return None


def host_limit(root: str | os.PathLike = "/sys/fs/cgroup", proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
               meminfo: str | os.PathLike = "/proc/meminfo") -> int | None:
    """Bytes this process may use: the cgroup limit where there is one, else ``MemAvailable``."""
    limit = _cgroup_limit(Path(root), Path(proc_cgroup))
    if limit is not None:
        return limit
    for line in (_read(Path(meminfo)) or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _config_folder(model_id: str) -> Path | None:
    """The folder of ``model_id``'s config.json: a path-like id's own folder, else the hub's file
    (fetched alone, or found in the cache); a hub-shaped id is never read as a local folder."""
    from studio.hosting import looks_like_path

    if looks_like_path(model_id):
        folder = Path(model_id).expanduser()
        return folder if (folder / "config.json").is_file() else None
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(model_id, "config.json")).parent


def parameter_count(model_id: str) -> int | None:
    """Parameters of ``model_id``: precomputed for the suggested models, else counted on the meta
    device from its config.json alone (no weights); None if there is no config to read."""
    if model_id in PARAMETERS:
        return PARAMETERS[model_id]
    try:
        from transformers import AutoConfig, AutoModelForImageTextToText

        folder = _config_folder(model_id)
        if folder is None:
            return None
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)  # never runs repository code
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        return sum(p.numel() for p in model.parameters())
    except Exception as err:  # noqa: BLE001 - no estimate; the load itself says what is wrong
        log.info("no memory estimate for %r: %s", model_id, type(err).__name__)
        return None


def weight_bytes(parameters: int, dtype: torch.dtype) -> float:
    """The model's share of the budget: its weights in ``dtype`` plus :data:`WEIGHT_MARGIN`."""
    return parameters * torch.empty((), dtype=dtype).element_size() * (1 + WEIGHT_MARGIN)


def need_bytes(parameters: int, dtype: torch.dtype) -> float:
    """What a server holding this model (and the embedded one) needs: its weights + the margins."""
    return weight_bytes(parameters, dtype) + RUNTIME_BYTES


def _gb(n: float) -> str:
    return f"{n / GB:.0f} GB" if n >= 10 * GB else f"{n / GB:.1f} GB"


@dataclass(frozen=True)
class MemoryBudget:
    """The operator's budget in bytes (None: no limit known, everything is allowed)."""

    limit: int | None

    @classmethod
    def from_setting(cls, gigabytes: float | str | None) -> "MemoryBudget":
        """``--memory-budget`` / ``V2DROP_MEMORY_BUDGET_GB`` in GB, or the host's limit when unset."""
        if gigabytes in (None, ""):
            return cls(host_limit())
        value = float(gigabytes)
        if not value > 0:
            raise ValueError(f"the memory budget must be a positive number of GB, got {gigabytes!r}")
        return cls(int(value * GB))

    def refusal(self, model_id: str, dtype: torch.dtype, parameters: int | None = None) -> str | None:
        """One sentence if ``model_id`` cannot fit in ``dtype`` (naming both numbers), else None."""
        count = parameters if parameters is not None else parameter_count(model_id)
        if self.limit is None or count is None:
            return None
        need = need_bytes(count, dtype)
        if need <= self.limit:
            return None
        return (f"{model_id} needs about {_gb(need)} in {str(dtype).removeprefix('torch.')}; "
                f"this server allows {_gb(self.limit)}.")

    def label(self, model_id: str, dtype: torch.dtype) -> str:
        """The model list's entry: the id, marked when it cannot fit (listed models only: no lookups)."""
        if self.limit is None or model_id not in PARAMETERS:
            return model_id
        need = need_bytes(PARAMETERS[model_id], dtype)
        return model_id if need <= self.limit else \
            f"{model_id} (too large here: needs about {_gb(need)}, the server allows {_gb(self.limit)})"

    def describe(self) -> str:
        return f"memory budget {_gb(self.limit)}" if self.limit is not None else "memory budget: no limit known"
