"""The operator's memory budget (``studio.budget``): the host's limit, the estimate (checked against
every measured peak), a refusal through the HTTP API before any download, and the marked list."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import torch

from studio.budget import GB, PARAMETERS, MemoryBudget, host_limit, need_bytes, parameter_count
from studio.registry import EMBEDDED_ID, SUGGESTED_MODELS, ModelLoadError, ModelRegistry
from tests.app_server import AppServer, raw_call

ROOT = Path(__file__).resolve().parent.parent
LLAVA_7B = "llava-hf/llava-1.5-7b-hf"
OV_05B = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_host_limit_reads_cgroup_v2_then_v1_then_available_memory(tmp_path):
    cg, proc, meminfo = tmp_path / "cg", tmp_path / "cgroup", tmp_path / "meminfo"
    _write(meminfo, "MemTotal: 32000000 kB\nMemAvailable:   8000000 kB\n")
    _write(proc, "0::/\n")
    assert host_limit(cg, proc, meminfo) == 8000000 * 1024           # no cgroup files: available memory
    _write(cg / "memory.max", "max\n")
    assert host_limit(cg, proc, meminfo) == 8000000 * 1024           # v2 without a limit
    _write(proc, "0::/user.slice/app\n")
    _write(cg / "user.slice/app/memory.max", str(16 * 2**30) + "\n")
    assert host_limit(cg, proc, meminfo) == 16 * 2**30               # this process's own v2 cgroup
    v1 = tmp_path / "v1"
    _write(proc, "4:memory:/docker/abc\n0::/\n")
    _write(v1 / "memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n")
    assert host_limit(v1, proc, meminfo) == 8000000 * 1024           # v1 "unlimited"
    _write(v1 / "memory/docker/abc/memory.limit_in_bytes", "4294967296\n")
    assert host_limit(v1, proc, meminfo) == 4294967296               # v1 limit


def test_budget_setting_defaults_to_the_host_and_refuses_nonsense(monkeypatch):
    monkeypatch.setattr("studio.budget.host_limit", lambda: 12_345)
    assert MemoryBudget.from_setting(None).limit == 12_345
    assert MemoryBudget.from_setting("8").limit == 8 * 10**9
    for bad in ("0", "-3", "nan"):
        with pytest.raises(ValueError):
            MemoryBudget.from_setting(bad)


def test_precomputed_parameter_counts_match_the_configs_on_the_meta_device():
    from transformers import AutoModelForImageTextToText

    from benchmarks import checkpoints

    assert set(PARAMETERS) == set(SUGGESTED_MODELS)
    for name, hub_id in checkpoints.hub_ids().items():
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(checkpoints.config(name, "real"))
        assert PARAMETERS[hub_id] == sum(p.numel() for p in model.parameters()), hub_id


def test_the_estimate_covers_every_measured_peak():
    """Each row of docs/bench/hosting-cpu.json (real-size model, one pair of answers, peak RSS of the
    whole process) must stay under the estimate for its model and dtype."""
    rows = json.loads((ROOT / "docs/bench/hosting-cpu.json").read_text())["results"]
    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32}
    assert len(rows) >= 9
    for row in rows:
        assert PARAMETERS[row["hub_id"]] == row["parameters"]
        need = need_bytes(row["parameters"], dtypes[row["dtype"]])
        assert row["peak_rss_bytes"] < need, (row["run"], row["peak_rss_bytes"] / GB, need / GB)


def test_refusal_names_both_numbers_and_the_list_marks_what_cannot_fit():
    budget = MemoryBudget(16 * 10**9)
    assert budget.refusal(LLAVA_7B, torch.bfloat16) == \
        "llava-hf/llava-1.5-7b-hf needs about 18 GB in bfloat16; this server allows 16 GB."
    assert budget.refusal(OV_05B, torch.float32) is None
    assert budget.refusal("Qwen/Qwen2.5-VL-3B-Instruct", torch.bfloat16) is None
    assert budget.refusal("Qwen/Qwen2.5-VL-3B-Instruct", torch.float32) is not None  # 19.5 GB
    assert budget.label(OV_05B, torch.bfloat16) == OV_05B
    assert budget.label(LLAVA_7B, torch.bfloat16) == \
        f"{LLAVA_7B} (too large here: needs about 18 GB, the server allows 16 GB)"
    assert MemoryBudget(None).refusal(LLAVA_7B, torch.float32) is None


def test_unknown_ids_get_no_estimate_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert parameter_count("nobody/no-such-model-v2drop") is None


def _registry_with_held(budget_gb: float, monkeypatch) -> tuple[ModelRegistry, list]:
    """A CPU float32 registry holding one 400 M-parameter model (meta tensors: 1.9 GB with the margin,
    no memory used), whose loader records its calls and fails as offline."""
    from studio.registry import LoadedModel

    registry = ModelRegistry(max_extra=2, device="cpu", cpu_dtype="float32", budget=MemoryBudget(int(budget_gb * GB)))
    calls: list = []

    def loader(model_id, **kwargs):
        calls.append(model_id)
        raise OSError("offline mode: outgoing traffic has been disabled")

    monkeypatch.setattr("v2drop.loading.load_model", loader)
    with torch.device("meta"):
        held = torch.nn.Linear(10_000, 40_000, bias=False)
    registry._extra["someone/held"] = LoadedModel("someone/held", held, None, "held")
    return registry, calls


def test_registry_refuses_before_the_loader_runs(monkeypatch):
    registry, calls = _registry_with_held(3.5, monkeypatch)
    with pytest.raises(ModelLoadError) as refused:
        registry.load(LLAVA_7B)
    assert str(refused.value) == "llava-hf/llava-1.5-7b-hf needs about 35 GB in float32; this server allows 3.5 GB."
    assert calls == [] and "someone/held" in registry._extra  # nothing loaded, nothing evicted


@pytest.mark.parametrize("budget_gb, evicted", [(7.0, True), (8.0, False)])
def test_registry_evicts_early_only_when_both_would_not_fit(monkeypatch, budget_gb, evicted):
    """OneVision-0.5B in float32 needs 1.2 × 3.57 + 1.5 = 5.8 GB; with the held model's 1.9 GB that
    is 7.7 GB: over a 7 GB budget (the held model goes before the load), under an 8 GB one."""
    registry, calls = _registry_with_held(budget_gb, monkeypatch)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        registry.load(OV_05B)
    assert calls == [OV_05B]
    assert ("someone/held" not in registry._extra) == evicted


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """The app as a Space runs it, with an 8 GB budget and float32 on the CPU."""
    log = tmp_path_factory.mktemp("budget") / "app.log"
    server = AppServer({"SPACE_ID": "someone/studio", "V2DROP_MEMORY_BUDGET_GB": "8", "V2DROP_CPU_DTYPE": "float32"},
                       log_path=log)
    yield server
    server.stop()


def test_a_model_that_cannot_fit_is_refused_through_the_api(small_server):
    out = raw_call(small_server, "switch_model", [LLAVA_7B, False])
    assert "llava-hf/llava-1.5-7b-hf needs about 35 GB in float32; this server allows 8.0 GB." in out
    assert "stays loaded" in out and "not in the local" not in out  # refused before any cache lookup
    fits = raw_call(small_server, "switch_model", [OV_05B, False])  # 5.8 GB: goes on to the (offline) load
    assert "not in the local Hugging Face cache" in fits and "needs about" not in fits
    assert small_server.proc.poll() is None


def test_the_model_list_marks_models_that_cannot_fit(small_server):
    with urllib.request.urlopen(small_server.url + "config", timeout=10) as reply:
        config = json.loads(reply.read())
    dropdown = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "model-id")
    labels = {value: label for label, value in dropdown["props"]["choices"]}
    assert labels[EMBEDDED_ID] == f"{EMBEDDED_ID} (trained with training aids)" and labels[OV_05B] == OV_05B
    for big in (LLAVA_7B, "llava-hf/llava-v1.6-vicuna-7b-hf", "Qwen/Qwen2.5-VL-3B-Instruct"):
        assert labels[big].startswith(f"{big} (too large here: needs about "), labels[big]
        assert labels[big].endswith(", the server allows 8.0 GB)")


def test_a_folder_is_counted_from_its_config_alone(tmp_path):
    """An operator's folder with a config.json and no weights: counted on the meta device."""
    from benchmarks import checkpoints

    checkpoints.config("qwen2-vl-2b", "narrow").save_pretrained(tmp_path / "qwen")
    assert not list((tmp_path / "qwen").glob("*.safetensors"))
    with torch.device("meta"):
        from transformers import AutoModelForImageTextToText
        expected = sum(p.numel() for p in AutoModelForImageTextToText.from_config(
            checkpoints.config("qwen2-vl-2b", "narrow")).parameters())
    assert parameter_count(str(tmp_path / "qwen")) == expected
    assert parameter_count(str(tmp_path / "missing")) is None


def test_a_folder_with_repository_code_is_never_run_for_an_estimate(tmp_path, monkeypatch):
    """The estimate reads config.json with trust_remote_code=False: no code, no estimate, and no
    question on the server's terminal (transformers asks one when the flag is left unset)."""
    from transformers.models.auto import configuration_auto

    asked = []
    real = configuration_auto.resolve_trust_remote_code
    monkeypatch.setattr(configuration_auto, "resolve_trust_remote_code",
                        lambda trust, *a, **k: asked.append(trust) or real(trust, *a, **k))
    marker = tmp_path / "ran"
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "evil_v2drop", "auto_map": {
        "AutoConfig": "evil.EvilConfig", "AutoModelForImageTextToText": "evil.EvilModel"}}))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    assert parameter_count(str(folder)) is None
    assert not marker.exists() and asked == [False]
