"""The library installs and runs alone: `pip install .` pulls only the core's dependencies, and
`import v2drop` + `v2drop.apply` work where Gradio, plotly, PyAV and scikit-image are missing."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP_ONLY = ("gradio", "plotly", "av", "skimage")

BLOCKED_RUN = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None            # `import name` now raises ImportError
import torch, v2drop, tiny_models
model, processor = tiny_models.build("qwen2_vl", {root!r})
inputs = tiny_models.inputs(processor, [tiny_models.image(1)], ["what is in the image ?"])
with torch.no_grad():
    reference = model(**inputs).logits
with v2drop.apply(model, "2:0.5") as run, torch.no_grad():
    pruned = model(**inputs).logits
sample = run.trace.samples[0]
assert len(sample.kept[2]) == sample.num_vision_tokens // 2, sample.kept
assert not torch.equal(reference, pruned)
print("library ok without", {blocked!r})
"""


def test_core_dependencies_leave_the_app_out():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"]]
    assert {"torch", "transformers"} <= set(names)
    assert not set(names) & {"gradio", "plotly", "av", "scikit-image"}
    assert {"video", "app", "bench", "dev"} <= set(project["optional-dependencies"])
    assert project["optional-dependencies"]["video"] == ["av>=12"]
    import v2drop
    assert project["version"] == v2drop.__version__


def test_no_library_module_imports_app_packages():
    """Top-level or lazy, no module of the package imports Gradio, plotly, the app or the benchmarks
    (PyAV only inside v2drop.video's decoder functions)."""
    for path in (ROOT / "v2drop").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            for root in roots:
                assert root not in ("gradio", "plotly", "skimage", "studio", "benchmarks", "shapes", "visualize"), \
                    f"{path.name} imports {root}"
                assert root != "av" or path.name == "video.py", f"{path.name} imports av"


def test_apply_runs_without_the_app_packages(tmp_path):
    script = BLOCKED_RUN.format(blocked=APP_ONLY, root=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT / "tests", capture_output=True, text=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                            "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "library ok" in done.stdout
