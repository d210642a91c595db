"""Family knowledge lives in the adapters: video support, frames per layout frame, own presets,
decoder depth; and the scoring registry does not hide a broken baselines module."""

import sys

import pytest

import v2drop
from v2drop.adapters import adapter_class, decoder_depth
from v2drop.schedule import PRESETS
from v2drop.video_inputs import frames_per_layout_frame, supports_video, video_model_types


def test_family_facts_by_model_type():
    assert video_model_types() == ["llava_onevision", "qwen2_vl", "qwen2_5_vl"]
    assert [supports_video(t) for t in ("llava", "llava_next", "llava_onevision")] == [False, False, True]
    assert frames_per_layout_frame("qwen2_5_vl") == 2 and frames_per_layout_frame("llava_onevision") == 1
    assert adapter_class("mllama") is None and not supports_video("mllama")


def test_own_presets_are_real_presets_for_the_right_depth():
    assert adapter_class("llava").own_presets(32)[0] == "llava-1.5-192"
    assert adapter_class("llava").own_presets(8) == ()                 # not LLaVA-1.5-7B's depth
    assert adapter_class("qwen2_vl").own_presets(28) == ("qwen2-vl-official",)
    assert adapter_class("llava_onevision").own_presets(24) == ()
    for family in v2drop.supported_architectures():
        assert set(adapter_class(family).own_presets(32)) <= set(PRESETS)


@pytest.mark.parametrize("family", ["llava", "llava_onevision", "qwen2_vl"])
def test_config_facts_match_the_model(tiny, family):
    model, _ = tiny(family, "sdpa")
    assert decoder_depth(model) == decoder_depth(model.config) == len(v2drop.get_adapter(model).decoder_layers())
    assert supports_video(model) == supports_video(model.config) == (family != "llava")
    step = model.config.vision_config.temporal_patch_size if family == "qwen2_vl" else 1
    assert frames_per_layout_frame(model) == step


def test_a_broken_baselines_module_is_an_error_not_an_unknown_method(monkeypatch):
    monkeypatch.delattr(v2drop, "baselines", raising=False)
    monkeypatch.setitem(sys.modules, "v2drop.baselines", None)  # makes `import v2drop.baselines` fail
    with pytest.raises(ImportError):
        v2drop.get_method("fastv")
