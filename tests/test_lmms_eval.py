"""The lmms-eval model ``v2drop`` end to end, offline: lmms-eval 0.7.3 loads the model through its
entry point, runs the local ``shapes_heldout`` task, scores it and writes results.

Skipped unless lmms_eval is importable: it lives in its own venv (.venv-eval, see docs/lmms-eval.md);
.ci/run creates that venv and runs this file there.
"""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("datasets")

import torch  # noqa: E402

from benchmarks.lmms.make_shapes_task import write_task  # noqa: E402
from shapes import scenes  # noqa: E402
from shapes.evaluate import evaluate  # noqa: E402
from shapes.model import DEFAULT_MODEL_DIR, load_default  # noqa: E402
from v2drop import DropSchedule  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
N = 48          # questions: 12 of each type
SCHEDULE = "2:0.5,4:0.5,6:0"

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(DEFAULT_MODEL_DIR, "model.safetensors")),
                                reason="trained Shapes weights missing")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_task(N, tmp_path_factory.mktemp("shapes_task"))


@pytest.fixture(scope="module")
def shapes_model():
    return load_default()


def run_lmms_eval(task_dir, out, model_args, launcher=(), batch_size=None):
    """``python -m lmms_eval`` (optionally under a launcher) in the repository root; returns
    (aggregated results, logged samples by doc id, combined output)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO),
               LMMS_EVAL_DATASETS_CACHE=str(out / "datasets"), TOKENIZERS_PARALLELISM="false")
    cmd = [*(launcher or [sys.executable]), "-m", "lmms_eval", "--model", "v2drop", "--model_args", model_args,
           "--tasks", "shapes_heldout", "--include_path", str(task_dir), "--output_path", str(out / "logs"),
           "--log_samples", "--verbosity", "INFO"]
    if batch_size is not None:
        cmd += ["--batch_size", str(batch_size)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    results = glob.glob(str(out / "logs" / "*" / "*_results.json"))
    assert proc.returncode == 0 and len(results) == 1, output[-4000:]  # lmms-eval exits 0 on errors too
    samples_file = glob.glob(str(out / "logs" / "*" / "*_samples_shapes_heldout.jsonl"))[0]
    samples = {row["doc_id"]: row for row in map(json.loads, Path(samples_file).read_text().splitlines())}
    return json.loads(Path(results[0]).read_text()), samples, output


def shapes_reference(model_and_processor, method, schedule, batch_size):
    model, processor = model_and_processor
    torch.set_num_threads(2)
    return evaluate(model, processor, scenes.benchmark(N), method=method,
                    schedule=DropSchedule.parse(schedule), batch_size=batch_size, return_predictions=True)


def test_the_model_is_registered_through_the_entry_point():
    from lmms_eval.models import get_model

    from v2drop.lmms.model import V2DropLMM

    assert get_model("v2drop") is V2DropLMM


@pytest.mark.parametrize("method, schedule", [("none", "none"), ("v2drop", SCHEDULE)])
def test_lmms_eval_accuracy_equals_shapes_evaluate(task_dir, shapes_model, tmp_path, method, schedule):
    args = f"pretrained={DEFAULT_MODEL_DIR},method={method},schedule={schedule.replace(',', ';')},batch_size=8"
    results, samples, _ = run_lmms_eval(task_dir, tmp_path, args)
    ref = shapes_reference(shapes_model, method, schedule, batch_size=8)

    got = results["results"]["shapes_heldout"]
    assert len(samples) == N == ref["n"]
    assert got["accuracy,none"] == pytest.approx(ref["accuracy"], abs=1e-12)
    for qtype, accuracy in ref["per_type"].items():
        assert got[f"{qtype}_accuracy,none"] == pytest.approx(accuracy, abs=1e-12)
    # the same answer to every question, not only the same count of right ones
    assert [samples[i]["filtered_resps"][0] if isinstance(samples[i]["filtered_resps"], list)
            else samples[i]["filtered_resps"] for i in range(N)] == [p["prediction"] for p in ref["predictions"]]

    throughput = results["throughput"]
    kept = DropSchedule.parse(schedule).average_kept(8, 256)
    assert throughput["avg_samples"] == N and throughput["avg_vision_tokens"] == 256
    assert throughput["avg_vision_tokens_kept"] == pytest.approx(kept)   # 256 unpruned, 112 under SCHEDULE
    assert throughput["avg_prefill_seconds_total"] > 0 and throughput["avg_peak_memory_mb"] > 0


def test_two_processes_split_the_questions_and_each_drops(task_dir, shapes_model, tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(29500 + os.getpid() % 1000)]
    args = f"pretrained={DEFAULT_MODEL_DIR},method=v2drop,schedule={SCHEDULE.replace(',', ';')},batch_size=1"
    results, samples, output = run_lmms_eval(task_dir, tmp_path, args, launcher=launcher)
    ref = shapes_reference(shapes_model, "v2drop", SCHEDULE, batch_size=1)

    assert results["results"]["shapes_heldout"]["accuracy,none"] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert sorted(samples) == list(range(N))
    # each process ran its own half under its own session; the reported figures cover both
    for rank in (0, 1):
        assert f"v2drop generate_until, process {rank}: {{'samples': {N // 2}.0" in output
    throughput = results["throughput"]
    assert throughput["avg_processes"] == 2 and throughput["avg_samples"] == N
    assert throughput["avg_vision_tokens_kept"] == pytest.approx(DropSchedule.parse(SCHEDULE).average_kept(8, 256))


def test_a_tiny_qwen2_vl_runs_the_task_under_a_baseline(task_dir, tmp_path):
    import tiny_models

    tiny_models.build("qwen2_vl", tmp_path)          # saves the model and its processor there
    schedule = "2:0.5,4:0"
    args = f"pretrained={tmp_path / 'qwen2_vl'},method=fastv-lite,schedule={schedule.replace(',', ';')},batch_size=4"
    results, samples, _ = run_lmms_eval(task_dir, tmp_path, args)

    assert len(samples) == N and 0.0 <= results["results"]["shapes_heldout"]["accuracy,none"] <= 1.0
    throughput = results["throughput"]
    n_vision = throughput["avg_vision_tokens"]          # 128×128 images resized to 112×112: 16 tokens
    assert n_vision == 16
    assert throughput["avg_vision_tokens_kept"] == pytest.approx(DropSchedule.parse(schedule).average_kept(6, 16))


MIXED_SIZES = ((128, 64), (64, 128), (128, 128), (160, 48), (96, 144))  # 18, 18, 16, 21, 16 tokens on the tiny Qwen


def test_a_mixed_size_qwen2_vl_task_answers_the_same_at_batch_1_and_8(tmp_path):
    """Images of five sizes: batches of 8 mix vision-token counts and run as one batch each (no
    fallback to one by one); every answer equals the batch-1 answer, unpruned and under V²Drop."""
    import tiny_models

    task = write_task(N, tmp_path / "mixed_task", sizes=MIXED_SIZES)
    tiny_models.build("qwen2_vl", tmp_path)
    for method, schedule in (("none", "none"), ("v2drop", "2:0.5;4:0.25")):
        answers = {}
        for batch_size in (1, 8):
            args = f"pretrained={tmp_path / 'qwen2_vl'},method={method},schedule={schedule},batch_size={batch_size}"
            results, samples, output = run_lmms_eval(task, tmp_path / f"{method}-{batch_size}", args)
            answers[batch_size] = [samples[i]["filtered_resps"] for i in range(N)]
            assert results["throughput"]["avg_samples"] == N
        assert answers[1] == answers[8], method
        assert 16 < results["throughput"]["avg_vision_tokens"] < 21      # the sizes really differ


def test_model_args_override_flags_and_bad_args_say_what_is_wrong():
    from v2drop.lmms.model import V2DropLMM

    lm = V2DropLMM.create_from_arg_string(f"pretrained={DEFAULT_MODEL_DIR},batch_size=4,schedule=2:0.5;6:0",
                                          {"batch_size": 1, "device": None, "max_batch_size": None})
    assert lm.batch_size == 4 and str(lm.schedule) == "2:0.5,6:0" and lm.device.type == "cpu"
    with pytest.raises(ValueError, match="unknown method"):
        V2DropLMM(pretrained=DEFAULT_MODEL_DIR, method="nope")
    with pytest.raises(ValueError):  # layer 12 does not exist in an 8-layer model
        V2DropLMM(pretrained=DEFAULT_MODEL_DIR, schedule="12:0.5")
    with pytest.raises(ValueError, match="batch_size"):
        V2DropLMM(pretrained=DEFAULT_MODEL_DIR, batch_size="auto")


def test_loglikelihood_is_the_unpruned_models_and_knows_its_greedy_answer(shapes_model):
    from lmms_eval.api.instance import Instance

    from v2drop.lmms.model import V2DropLMM

    lm = V2DropLMM(pretrained=DEFAULT_MODEL_DIR, method="none")
    model, processor = shapes_model
    sample = scenes.benchmark(1)[0]
    greedy = shapes_reference(shapes_model, "none", "none", 1)["predictions"][0]["prediction"].strip().split()[0]
    other = "purple" if greedy != "purple" else "green"
    lm.task_dict = {"shapes": {"test": [{"image": sample.image, "question": sample.question}]}}
    requests = [Instance("loglikelihood", (sample.question, target, lambda doc: [doc["image"]], 0, "shapes", "test"),
                         idx=0, metadata={"task": "shapes", "doc_id": 0, "repeats": 1}) for target in (greedy, other)]
    (lp_greedy, is_greedy), (lp_other, other_greedy) = lm.loglikelihood(requests)
    assert is_greedy and not other_greedy and lp_greedy > lp_other

    # the same number from a plain forward pass of the unpatched model
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                            {"type": "text", "text": sample.question}]}],
                                           add_generation_prompt=True, tokenize=False)
    full = processor(images=[sample.image], text=[prompt + greedy], return_tensors="pt")
    n_prompt = processor(images=[sample.image], text=[prompt], return_tensors="pt")["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**full).logits[0, n_prompt - 1:-1].log_softmax(-1)
    targets = full["input_ids"][0, n_prompt:]
    assert lp_greedy == pytest.approx(logits.gather(-1, targets[:, None]).sum().item(), abs=1e-4)


def test_the_recipe_names_real_lmms_eval_tasks_and_the_ocr_prompt():
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import load_yaml_config

    from benchmarks.lmms.paper_table import BENCHMARKS, TASK_DIR

    manager = TaskManager("WARNING", include_path=str(TASK_DIR), model_name="v2drop")
    assert all(bench.task in manager.all_tasks for bench in BENCHMARKS)
    config = load_yaml_config(str(TASK_DIR / "textvqa_val_ocr.yaml"))
    prompt = config["doc_to_text"]({"question": "what is written?", "ocr_tokens": ["stop", "sign"]},
                                   config["lmms_eval_specific_kwargs"]["default"])
    assert prompt == "What is written?\nReference OCR token: stop, sign\nAnswer the question using a single word or phrase."


def test_videos_of_different_lengths_batch_and_answer_as_alone(tmp_path):
    """Two videos (4 and 8 frames) and an image in one lmms-eval batch: the videos run as one
    ragged batch, the image beside them; every answer equals the batch-1 answer."""
    import tiny_models
    from lmms_eval.api.instance import Instance

    from v2drop.lmms.model import V2DropLMM
    from v2drop.video import write_video

    tiny_models.build("qwen2_vl", tmp_path)
    clips = [write_video(tmp_path / f"clip{n}.mp4", [tiny_models.image(i + n, (112, 84)) for i in range(n)], fps=4)
             for n in (4, 8)]
    docs = [{"video": str(clips[0])}, {"image": tiny_models.image(7, (128, 64))}, {"video": str(clips[1])}]
    to_visual = lambda doc: [doc.get("video") or doc["image"]]  # noqa: E731
    requests = [Instance("generate_until", ("what happens?", {"max_new_tokens": 4}, to_visual, i, "t", "test"),
                         idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}) for i in range(3)]
    answers = {}
    for batch_size in (1, 3):
        lm = V2DropLMM(pretrained=str(tmp_path / "qwen2_vl"), method="v2drop", schedule="2:0.5;4:0.25",
                       batch_size=batch_size, max_frames=8)
        lm.task_dict = {"t": {"test": docs}}
        rows, generate = [], lm.model.generate
        lm.model.generate = lambda **kw: rows.append(kw["input_ids"].shape[0]) or generate(**kw)
        answers[batch_size] = lm.generate_until(requests)
    assert answers[1] == answers[3] and len(answers[3]) == 3
    assert rows == [2, 1]                                   # the two videos together, then the image


def test_a_video_request_runs_alone_and_its_tokens_are_dropped(tmp_path):
    import tiny_models
    from lmms_eval.api.instance import Instance

    from v2drop.lmms.model import V2DropLMM
    from v2drop.video import write_video

    tiny_models.build("qwen2_vl", tmp_path)
    video = write_video(tmp_path / "clip.mp4", [tiny_models.image(i, (112, 112)) for i in range(4)], fps=4)
    docs = [{"video": str(video)}, {"image": tiny_models.image(7, (112, 112))}]
    lm = V2DropLMM(pretrained=str(tmp_path / "qwen2_vl"), method="v2drop", schedule="2:0.5;4:0", batch_size=2,
                   max_frames=4)
    lm.task_dict = {"t": {"test": docs}}
    to_visual = lambda doc: [doc.get("video") or doc["image"]]  # noqa: E731  (a path for the video, as lmms-eval's video tasks)
    requests = [Instance("generate_until", ("<video>\nwhat happens?", {"max_new_tokens": 2}, to_visual, i, "t", "test"),
                         idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}) for i in range(2)]
    answers = lm.generate_until(requests)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    from lmms_eval.models.model_utils.gen_metrics import get_logged_metrics_history

    logged = get_logged_metrics_history()[-1]
    assert logged["samples"] == 2
    # 4 frames of 112×112 → 2 temporal slices × 16 tokens; the image gives 16: the mean is 24
    assert logged["vision_tokens"] == 24
    assert logged["vision_tokens_kept"] == pytest.approx(
        (DropSchedule.parse("2:0.5,4:0").average_kept(6, 32) + DropSchedule.parse("2:0.5,4:0").average_kept(6, 16)) / 2)
