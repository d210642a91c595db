"""The model cache shared by all sessions: the embedded models (``shapes.embedded``) always, each
loaded at its first use and never evicted, a few others least recently used out, every load through
one lock and (optionally) the operator's policy, and a small :class:`ModelCard` of every loaded model
that outlives its eviction."""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from shapes.embedded import EMBEDDED_MODELS, EmbeddedModel, embedded_by_id
from studio.schedules import num_decoder_layers
from studio.zerogpu import active as zerogpu_active

__all__ = ["EMBEDDED_ID", "EMBEDDED_IDS", "is_embedded_id", "SUGGESTED_MODELS", "ModelLoadError", "LoadedModel",
           "ModelCard", "ModelRegistry"]

log = logging.getLogger("v2drop.studio")
EMBEDDED_IDS = tuple(m.model_id for m in EMBEDDED_MODELS)  # every shipped model's id, the default first
EMBEDDED_ID = EMBEDDED_IDS[0]                              # the default: "embedded: shapes-llava"
SUGGESTED_MODELS = [
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    "Qwen/Qwen2-VL-2B-Instruct",
    "Qwen/Qwen2.5-VL-3B-Instruct",
    "llava-hf/llava-1.5-7b-hf",
    "llava-hf/llava-v1.6-vicuna-7b-hf",   # LLaVA-NeXT-7B, the paper's NeXT model
]


#: the files of a typed hub id that are fetched (no repository code: typed ids are never trusted)
HUB_MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def is_embedded_id(model_id: str | None) -> bool:
    """Whether ``model_id`` names one of the shipped models (never a hub id or a folder)."""
    return embedded_by_id(model_id) is not None


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why in plain words."""


@dataclass
class LoadedModel:
    model_id: str
    model: torch.nn.Module
    processor: Any
    label: str
    trained: bool = True
    is_embedded: bool = False
    note: str = ""
    image_cap: str = ""   # what the operator's image cap set (v2drop.resolution), for the page

    @property
    def num_layers(self) -> int:
        return num_decoder_layers(self.model)

    def card(self, trust_remote_code: bool = False) -> "ModelCard":
        from v2drop.video import default_num_frames
        return ModelCard(self.model_id, self.label, self.model.config, self.is_embedded, self.trained, self.note,
                         default_num_frames(self.model), trust_remote_code, self.image_cap)


@dataclass(frozen=True)
class ModelCard:
    """What the page needs to know about a loaded model without holding its weights (its config,
    label, default frame count): kept after the model is evicted, so that schedule and video
    handlers never have to load it again. ``presets_for``, ``schedule_summary``,
    ``supports_video`` and ``nominal_vision_tokens`` take a card where they take a model."""

    model_id: str
    label: str
    config: Any
    is_embedded: bool
    trained: bool
    note: str
    default_frames: int
    trust_remote_code: bool = False
    image_cap: str = ""

    @property
    def num_layers(self) -> int:
        return num_decoder_layers(self)


def _pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _explain_load_error(model_id: str, err: BaseException) -> str:
    from v2drop.adapters import UnsupportedModelError, supported_architectures

    text = f"{type(err).__name__}: {err}"
    low = text.lower()
    if isinstance(err, UnsupportedModelError):
        return f"{model_id!r} loaded, but its architecture is not supported by V²Drop: {err}"
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in low:
        return f"Not enough memory to load {model_id!r}; the current model stays in use."
    if ("offline" in low or "localentrynotfound" in low or "connection" in low or "couldn't connect" in low
            or "cannot find the requested files" in low or "outgoing traffic has been disabled" in low):
        return (f"{model_id!r} is not in the local Hugging Face cache and the network is unavailable "
                "(offline mode), so it cannot be downloaded here.")
    if "repositorynotfound" in low or "is not a local folder and is not a valid model identifier" in low or \
            "not a valid model identifier" in low or "404" in low:
        return f"{model_id!r} is not a known model."
    if "unrecognized configuration class" in low or "does not recognize this architecture" in low or \
            "model type" in low and "not" in low:
        return (f"{model_id!r} is not an image-text-to-text model that this app supports "
                f"(supported families: {', '.join(supported_architectures())}).")
    if "trust_remote_code" in low:
        return f"{model_id!r} needs custom code from its repository, which this server does not run for it."
    return f"{model_id!r} could not be loaded (see the server log for details)."


class ModelRegistry:
    """Loaded models shared by all sessions, keyed by id. Every embedded model is always available
    (loaded at its first use, never evicted); at most ``max_extra`` other models are kept (least
    recently used first out). ``embedded_dir`` is the default embedded model's folder and
    ``embedded_dirs`` (id -> folder) any embedded model's, where an operator or a test keeps them
    elsewhere than ``assets/``.

    Every load goes through :meth:`load`, one at a time (``_load_lock``): a model that several
    sessions need again after an eviction is loaded once, and the others find it in the cache.
    ``policy`` (an object with ``allows(model_id, trust_remote_code) -> reason | None``, e.g.
    :class:`studio.hosting.HostingPolicy`) is asked before anything is read from disk or the hub."""

    def __init__(self, max_extra: int = 1, device: str | None = None,
                 embedded_dir: str | None = None, policy: Any = None, image_cap: str = "auto",
                 cpu_dtype: str = "auto", budget: Any = None,
                 embedded_dirs: Mapping[str, str] | None = None) -> None:
        from v2drop.loading import cpu_dtype as pick_cpu_dtype
        from v2drop.resolution import pick_cap

        self.max_extra = max_extra
        self.device = device or _pick_device()
        self.image_cap = pick_cap(image_cap, torch.device(self.device).type)  # "full" or "base"
        # hub models on the CPU: bfloat16 where the CPU computes it natively (None: load_model's default)
        self.dtype = pick_cpu_dtype(cpu_dtype) if torch.device(self.device).type == "cpu" else None
        self.embedded_dir = embedded_dir
        self.embedded_dirs = {**(embedded_dirs or {}), **({EMBEDDED_ID: embedded_dir} if embedded_dir else {})}
        self.policy = policy
        self.budget = budget  # a studio.budget.MemoryBudget (None: no memory check)
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._extra: "OrderedDict[str, LoadedModel]" = OrderedDict()
        self._cards: "OrderedDict[str, ModelCard]" = OrderedDict()
        self._embedded: dict[str, LoadedModel] = {}   # embedded id -> model, never evicted
        self.loads = 0  # completed loads from disk or the hub (not cache hits), for tests and logs

    # embedded -------------------------------------------------------------------------------
    def embedded_folder(self, model_id: str | None = None) -> str:
        """The folder of an embedded model (the default one for ``None``); ``KeyError`` for other ids."""
        spec = self._spec(model_id)
        return self.embedded_dirs.get(spec.model_id) or spec.folder

    @staticmethod
    def _spec(model_id: str | None) -> EmbeddedModel:
        spec = EMBEDDED_MODELS[0] if not model_id else embedded_by_id(model_id)
        if spec is None:
            raise KeyError(model_id)
        return spec

    def _weights_path(self, model_id: str | None = None) -> Path:
        return Path(self.embedded_folder(model_id)) / "model.safetensors"

    def embedded(self, model_id: str | None = None) -> LoadedModel:
        """An embedded Shapes model (the default one for ``None``), loaded at its first use through
        the load lock; built untrained (and labelled so) while its weights are missing, and swapped
        for the trained one as soon as the weights appear."""
        model_id = self._spec(model_id).model_id

        def current() -> LoadedModel | None:
            with self._lock:
                entry = self._embedded.get(model_id)
            if entry is None or (not entry.trained and self._weights_path(model_id).exists()):
                return None
            return entry

        entry = current()
        if entry is not None:
            return entry
        with self._load_lock:  # one load at a time; whoever waited finds the model loaded
            entry = current()
            if entry is None:
                entry = self._load_embedded(model_id)
                with self._lock:
                    self._embedded[model_id] = entry
            return entry

    def _load_embedded(self, model_id: str) -> LoadedModel:
        from shapes import model as shapes
        spec, folder = self._spec(model_id), self.embedded_folder(model_id)
        try:
            model, processor = shapes.load_default(self.device, folder)
            return LoadedModel(model_id, model, processor, spec.label, trained=True, is_embedded=True)
        except (FileNotFoundError, OSError) as err:
            model = shapes.build_model().to(self.device).eval()
            processor = shapes.build_processor()
            log.warning("embedded weights missing (%s): %s", self._weights_path(model_id), err)
            note = ("This embedded model's trained weights are missing, so it runs UNTRAINED with random "
                    "weights: answers are meaningless, but dropping, heatmaps and timings work.")
            return LoadedModel(model_id, model, processor, spec.label + " — UNTRAINED (weights missing)",
                               trained=False, is_embedded=True, note=note)

    # others ---------------------------------------------------------------------------------
    def get(self, model_id: str | None) -> LoadedModel:
        """A loaded model by id (an embedded one for ``None`` or its id, loaded if need be)."""
        if not model_id or is_embedded_id(model_id):
            return self.embedded(model_id)
        with self._lock:
            if model_id not in self._extra:
                raise KeyError(model_id)
            self._extra.move_to_end(model_id)
            return self._extra[model_id]

    def loaded_ids(self) -> list[str]:
        """The default embedded model (always there), the other embedded ones loaded so far, the others."""
        with self._lock:
            return [EMBEDDED_ID, *(m for m in EMBEDDED_IDS[1:] if m in self._embedded), *self._extra]

    def card(self, model_id: str | None) -> ModelCard:
        """The :class:`ModelCard` of a model loaded at least once (``KeyError`` otherwise); never loads."""
        if not model_id or is_embedded_id(model_id):
            return self.embedded(model_id).card()
        with self._lock:
            return self._cards[model_id]

    def ensure(self, model_id: str | None) -> LoadedModel:
        """The model, loaded again (once, with the trust it was loaded with) if another session's load
        evicted it. Raises :class:`ModelLoadError` with a message for the page if that fails."""
        try:
            return self.get(model_id)
        except KeyError:
            with self._lock:
                card = self._cards.get(model_id)
            return self.load(model_id, trust_remote_code=bool(card and card.trust_remote_code))

    def load(self, model_id: str, trust_remote_code: bool = False,
             progress: Callable[[float, str], None] | None = None) -> LoadedModel:
        """Load ``model_id`` (hub id or local folder) or return it from the cache. Raises
        :class:`ModelLoadError` with a plain-language reason; the cache is unchanged on failure."""
        model_id = (model_id or "").strip()
        if not model_id or is_embedded_id(model_id):
            return self.embedded(model_id)
        if len(model_id) > 200 or any(c in model_id for c in "\n\r\t"):
            raise ModelLoadError("That does not look like a model id (expected 'owner/name' or a local folder).")
        reason = self.policy.allows(model_id, trust_remote_code) if self.policy is not None else None
        if reason:
            raise ModelLoadError(reason)
        with self._lock:
            if model_id in self._extra:
                self._extra.move_to_end(model_id)
                return self._extra[model_id]
        parameters = self._check_budget(model_id)  # before any download or cache lookup of the weights
        with self._load_lock:  # one load at a time; whoever waited finds the model in the cache
            with self._lock:
                if model_id in self._extra:
                    self._extra.move_to_end(model_id)
                    return self._extra[model_id]
                self._make_room(parameters)
            return self._load_new(model_id, trust_remote_code, progress)

    @property
    def load_dtype(self) -> torch.dtype:
        """The dtype hub models are loaded in here (as :func:`v2drop.loading.load_model` picks it)."""
        if self.dtype is not None:
            return self.dtype
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32

    def _check_budget(self, model_id: str) -> int | None:
        """The model's parameter count (None if unknown); :class:`ModelLoadError` if it cannot fit."""
        if self.budget is None:
            return None
        from studio.budget import parameter_count
        parameters = parameter_count(model_id)
        reason = self.budget.refusal(model_id, self.load_dtype, parameters)
        if reason:
            raise ModelLoadError(reason)
        return parameters

    def _make_room(self, parameters: int | None) -> None:
        """Evict least recently used models (early, before the load rather than after it) while they
        and the new one would not fit in the budget together. Call with ``_lock`` held."""
        if self.budget is None or self.budget.limit is None or parameters is None:
            return
        from studio.budget import WEIGHT_MARGIN, need_bytes

        def held() -> float:  # the loaded models' weights, as they are, with the same margin
            return sum(p.numel() * p.element_size() for e in self._extra.values()
                       for p in e.model.parameters()) * (1 + WEIGHT_MARGIN)

        while self._extra and need_bytes(parameters, self.load_dtype) + held() > self.budget.limit:
            gone, _ = self._extra.popitem(last=False)
            log.info("evicted %r before the next load: both would not fit in the %s", gone, self.budget.describe())
            gc.collect()

    def model_label(self, model_id: str) -> str:
        """The model list's entry for ``model_id``: an embedded model's id says how it was trained; any
        other is marked when it cannot fit in the memory budget."""
        spec = embedded_by_id(model_id)
        if spec is not None:
            return f"{model_id} ({spec.short})"
        return self.budget.label(model_id, self.load_dtype) if self.budget is not None else model_id

    def _source(self, model_id: str) -> str:
        """What to load ``model_id`` from: a visitor's typed hub id (``policy.hub_only``) from the hub or
        its cache only, as a snapshot folder of the files a model needs; anything else as it is."""
        hub_only = getattr(self.policy, "hub_only", None)
        if hub_only is None or not hub_only(model_id):
            return model_id
        from huggingface_hub import snapshot_download
        return snapshot_download(model_id, allow_patterns=HUB_MODEL_FILES)

    def _load_new(self, model_id: str, trust_remote_code: bool,
                  progress: Callable[[float, str], None] | None) -> LoadedModel:
        from v2drop.adapters import get_adapter
        from v2drop.loading import load_model
        from v2drop.resolution import apply_cap

        def report(fraction: float, message: str) -> None:
            if progress is not None:
                progress(fraction, message)

        report(0.05, f"Reading the configuration of {model_id}…")
        try:
            report(0.2, f"Loading the weights of {model_id} on {self.device} (this can take a while)…")
            model, processor = load_model(self._source(model_id), device=self.device, dtype=self.dtype,
                                          trust_remote_code=trust_remote_code)
            report(0.85, "Checking that V²Drop can patch it…")
            get_adapter(model)
            cap = apply_cap(model, processor, self.image_cap)
            getattr(processor, "apply_chat_template")
        except Exception as err:  # noqa: BLE001 - every failure becomes a message; cancellation passes
            log.warning("loading %r failed: %s: %s", model_id, type(err).__name__, err)
            gc.collect()
            raise ModelLoadError(_explain_load_error(model_id, err)) from err
        entry = LoadedModel(model_id, model, processor, model_id, image_cap=cap.label)
        with self._lock:
            self.loads += 1
            log.info("loaded model %r (load %d of this process)", model_id, self.loads)
            self._cards[model_id] = entry.card(trust_remote_code)
            while len(self._cards) > 64:  # cards are small, but typed ids are unbounded
                self._cards.popitem(last=False)
            self._extra[model_id] = entry
            while len(self._extra) > self.max_extra:
                self._extra.popitem(last=False)
            gc.collect()
            if torch.cuda.is_available() and not zerogpu_active():  # ZeroGPU: no CUDA outside a GPU call
                torch.cuda.empty_cache()
        report(1.0, "Loaded.")
        return entry
