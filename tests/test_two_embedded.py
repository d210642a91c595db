"""Two embedded models: both in the picker (named for how they were trained), each loaded through the
registry's lock and never evicted, each answering with its own processor, each with its own measured
sweep (preset trap labels, *How it works*), and the two side by side in *How it works* (a panel per
model, one that says what is missing when a model folder lacks its report or sweep).

The second model's folder is a tmp model built here (``shapes.model.build_model`` with a tokenizer
that knows one more word, ``foo_bar``), never the shipped ``assets/shapes-llava-standard``."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path

import pytest
import tiny_models
import torch

from shapes.embedded import EMBEDDED_MODELS, embedded_by_id
from shapes.model import EMBEDDED_MODEL_DIRS, build_model, build_processor, build_tokenizer
from studio.handlers import Studio
from studio.hosting import HostingPolicy
from studio.registry import EMBEDDED_ID, EMBEDDED_IDS, ModelRegistry
from studio.schedules import presets_for
from studio.sessions import FrameCache, SessionStore
from v2drop.schedule import DropSchedule
from visualize.two_models import ModelNumbers, comparison_figure, comparison_story, is_lazy

ROOT = Path(__file__).resolve().parents[1]
STAR = str(ROOT / "assets" / "examples" / "shapes_0_color.png")
STANDARD = EMBEDDED_IDS[1]
WORD = "foo_bar"


def _save_model(folder: Path, extra_words: tuple[str, ...] = ()) -> Path:
    """A random-weight Shapes model saved as the app ships one (weights, config, processor)."""
    model = build_model(seed=1, tokenizer=build_tokenizer(extra_words))
    model.save_pretrained(folder)
    build_processor(str(folder), extra_words=extra_words)
    return folder


def _trap_sweep(folder: Path) -> dict:
    """A sweep of ``folder``'s weights with a trap where the default preset (half of the tokens on layer
    average) first drops, at the sweep's budget of 50 %."""
    text = presets_for(build_model(), True)[0][1]   # the default preset of a Shapes model
    schedule = DropSchedule.parse(text)
    share = round(schedule.average_kept(8, 256) / 256, 4)
    row = dict(budget=0.5, first_layer=schedule.layers[0], reachable=True, schedule=text, avg_kept_share=share,
               accuracy=0.4)
    rows = [{**row, "method": "v2drop", "relative": 0.42, "recall_at_first_drop": 0.05},
            {**row, "method": "random", "relative": 0.93, "recall_at_first_drop": 0.5, "accuracy": 0.85}]
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    sweep = {"model": "tmp", "weights_sha256": digest, "n": 12, "num_layers": 8, "num_vision_tokens": 256,
             "unpruned": {"accuracy": 0.9}, "rows": rows}
    (folder / "sweep.json").write_text(json.dumps(sweep))
    return sweep


VARIATION = [{"layer": 1, "object": 30.0, "background": 20.0, "object_in_top_half": 0.8},
             {"layer": 2, "object": 10.0, "background": 40.0, "object_in_top_half": 0.04}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The default model's folder (random weights, no sweep, no report) and the second one's (its
    own tokenizer, a sweep with a trap, a report)."""
    root = tmp_path_factory.mktemp("two-embedded")
    default = _save_model(root / "default")
    standard = _save_model(root / "standard", (WORD,))
    _trap_sweep(standard)
    (standard / "report.json").write_text(json.dumps({"model": "tmp", "variation": VARIATION}))
    return {EMBEDDED_ID: default, STANDARD: standard}


@pytest.fixture(scope="module")
def studio(folders, tmp_path_factory):
    registry = ModelRegistry(max_extra=1, device="cpu", embedded_dirs={k: str(v) for k, v in folders.items()})
    return Studio(registry, SessionStore(tmp_path_factory.mktemp("sessions")), FrameCache(max_bytes=1 << 22),
                  answer_tokens=2)


def test_the_model_list_is_one_list_default_first():
    assert [m.model_id for m in EMBEDDED_MODELS] == list(EMBEDDED_IDS) and EMBEDDED_ID == "embedded: shapes-llava"
    assert STANDARD == "embedded: shapes-llava-standard"
    assert EMBEDDED_MODEL_DIRS == tuple(str(ROOT / "assets" / m.name) for m in EMBEDDED_MODELS)
    assert "training aids" in embedded_by_id(EMBEDDED_ID).label
    assert "standard way" in embedded_by_id(STANDARD).label and "no training aids" in embedded_by_id(STANDARD).label
    assert embedded_by_id("llava-hf/llava-1.5-7b-hf") is None


def test_the_picker_lists_both_embedded_models_first_named_for_their_training(studio):
    for policy in (HostingPolicy(), HostingPolicy(models=("a/one",))):
        assert policy.choices()[:2] == list(EMBEDDED_IDS)
        assert all(policy.allows(m) is None and not policy.hub_only(m) for m in EMBEDDED_IDS)
    assert studio.registry.model_label(EMBEDDED_ID).endswith("(trained with training aids)")
    assert studio.registry.model_label(STANDARD).endswith("(trained the standard way)")


def test_each_embedded_model_is_loaded_once_from_its_own_folder_and_never_evicted(studio, folders, tmp_path):
    registry = studio.registry
    first = registry.embedded(STANDARD)
    assert registry.get(STANDARD) is first and registry.load(STANDARD) is first and registry.ensure(STANDARD) is first
    assert first.is_embedded and first.trained and first.model_id == STANDARD and "standard way" in first.label
    assert registry.embedded_folder(STANDARD) == str(folders[STANDARD])
    assert WORD in first.processor.tokenizer.get_vocab()
    assert WORD not in registry.embedded().processor.tokenizer.get_vocab()  # the default keeps its own
    assert STANDARD in registry.loaded_ids()
    for name in ("a", "b"):   # two other models come and go (max_extra=1): the embedded ones stay
        tiny_models.build("llava", tmp_path / name)
        registry.load(str(tmp_path / name / "llava"))
    assert registry.get(STANDARD) is first and registry.loads == 2
    assert registry.loaded_ids()[:2] == list(EMBEDDED_IDS) and len(registry.loaded_ids()) == 3


def test_selecting_the_second_model_answers_with_its_own_processor(studio):
    state = studio.initial_state()
    entry = studio.registry.embedded(STANDARD)
    vocab = entry.processor.tokenizer.get_vocab()
    head = torch.nn.Linear(entry.model.config.text_config.hidden_size, len(vocab), bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(vocab[WORD]), len(vocab)).float() * 50)
    entry.model.lm_head = head     # this model now answers its own word, whatever it sees
    out = studio.on_switch_model(STANDARD, False, state)
    assert state.model_id == STANDARD and "Loaded embedded: shapes-llava-standard" in out[5]
    *_, last = studio.chat(f"what color is the {WORD} ?", STAR, state, None)
    assert state.stats["model_id"] == STANDARD
    full, drop = state.turns_full[-1][1], state.turns_drop[-1][1]
    assert full.split()[0] == WORD and drop.split()[0] == WORD, (full, drop)   # decoded by its own tokenizer
    assert "on embedded: shapes-llava-standard" in last[2]


def test_preset_traps_and_the_measured_sweep_follow_the_selected_model(studio):
    default, standard = studio.registry.card(EMBEDDED_ID), studio.registry.card(STANDARD)
    warned = [label for label, _ in studio.preset_choices(standard) if "⚠️ first drop at layer" in label]
    assert warned and "42 % of unpruned" in warned[0] and "random dropping: 93 %" in warned[0]
    assert not any("⚠️" in label for label, _ in studio.preset_choices(default))   # its folder has no sweep
    state = studio.initial_state()
    state.model_id = STANDARD
    text, plot = studio.sweep_view(state)
    assert "12 held-out questions" in text and plot.visible and STANDARD in plot.label
    state.model_id = EMBEDDED_ID
    text, plot = studio.sweep_view(state)
    assert "none measured" in text and EMBEDDED_ID in text and not plot.visible


def test_how_it_works_shows_both_models_and_says_what_is_missing(studio):
    text, fig = studio.embedded_comparison()
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:2] == ["shapes-llava<br>(with training aids)", "shapes-llava-standard<br>(the standard way)"]
    assert {t.xaxis for t in fig.data} == {"x2"}     # the default's folder has no numbers: an empty panel
    missing = " ".join(titles[2:]).replace("<br>", " ")
    assert "report.json is missing" in missing and "sweep.json is missing" in missing   # the default's folder
    first, second = text.split("\n- ")[1:]
    assert "report.json is missing" in first
    assert "lazy at layer 2 (laziest at layer 2: 4 %" in second and "40.0" in second
    assert "accuracy 42 % vs 93 %" in second and "object patches alive 5 % vs 50 %" in second


def test_the_figure_and_paragraph_come_from_the_numbers_alone():
    assert [is_lazy(r) for r in VARIATION] == [False, True]
    active = [dict(r, object=50.0, background=10.0, object_in_top_half=0.9) for r in VARIATION]
    models = [ModelNumbers("a", VARIATION, None), ModelNumbers("b", active, None, ("no sweep here",))]
    fig = comparison_figure(models)
    bars = [t for t in fig.data if t.type == "bar"]
    assert list(bars[0].marker.color) == ["#3a9d5d", "#e4572e"] and set(bars[1].marker.color) == {"#3a9d5d"}
    story = comparison_story(models)
    assert "lazy at layer 2" in story and "active at every layer" in story and "no sweep here" in story
    empty = comparison_figure([ModelNumbers("a", None, None, ("nothing",)), ModelNumbers("b", None, None)])
    assert len(empty.data) == 0 and any("nothing" in a.text for a in empty.layout.annotations)


def test_the_page_lists_both_models_and_switches_to_the_second_over_http(tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file

    from app_server import AppServer

    server = AppServer(log_path=tmp_path / "app.log")
    try:
        with urllib.request.urlopen(server.url + "config", timeout=10) as reply:
            config = json.loads(reply.read())
        props = {c.get("props", {}).get("elem_id"): c["props"] for c in config["components"]}
        labels = {value: label for label, value in props["model-id"]["choices"]}
        assert list(labels)[:2] == list(EMBEDDED_IDS) and "standard way" in labels[STANDARD]
        chart = json.dumps(props["two-models-chart"]["value"])
        assert all(m.name in chart for m in EMBEDDED_MODELS)
        client = Client(server.url, verbose=False)
        loaded = client.predict(STANDARD, False, api_name="/switch_model")
        assert "Loaded embedded: shapes-llava-standard" in loaded[5]
        picture = handle_file(STAR)
        client.predict(picture, api_name="/set_image")
        answered = client.predict("what color is the star ?", picture, api_name="/chat")
        assert "on embedded: shapes-llava-standard" in answered[2] and answered[0] and answered[1]
        assert server.proc.poll() is None
    finally:
        server.stop()
