"""``python -m studio.deploy``: the upload set is what the Space needs (the app starts and answers
from a copy of exactly that set), every large tracked file is LFS-routed, and the hub calls are the
documented ones. Offline: the hub API is a recording fake."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from studio import deploy

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "assets/shapes-llava/model.safetensors"


def _git_checkout() -> bool:
    return shutil.which("git") is not None and (ROOT / ".git").exists()


needs_git = pytest.mark.skipif(not _git_checkout(), reason="needs a git checkout")


def test_upload_set_holds_the_runtime_and_nothing_else():
    paths = {f.path for f in deploy.upload_set()}
    for needed in ("app.py", "README.md", "requirements.txt", ".gitattributes", WEIGHTS,
                   "assets/shapes-llava/config.json", "v2drop/engine.py", "studio/handlers.py",
                   "visualize/overlay.py", "shapes/model.py"):
        assert needed in paths, needed
    for path in paths:
        top = path.split("/")[0]
        assert top not in {"tests", "docs", "benchmarks", ".venv", ".ci", ".git"}, path
        assert "__pycache__" not in path and not path.endswith(".pyc"), path


def test_upload_set_ignores_untracked_and_unlisted_files(tmp_path):
    for name in ("app.py", "README.md", "studio/x.py", "studio/__pycache__/x.cpython-311.pyc", "tests/t.py",
                 "notes.txt", "assets/a.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * 3)
    walked = {f.path for f in deploy.upload_set(tmp_path)}  # not a git checkout: every file on disk
    assert walked == {"app.py", "README.md", "studio/x.py", "assets/a.png"}
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
        (tmp_path / ".gitignore").write_text("assets/\n__pycache__/\n")
        subprocess.run(["git", "add", "app.py"], cwd=tmp_path, check=True)
        # tracked or not ignored: ignored files stay behind even under a listed folder
        assert {f.path for f in deploy.upload_set(tmp_path)} == {"app.py", "README.md", "studio/x.py"}


def test_the_app_runs_from_a_copy_of_exactly_the_upload_set(tmp_path):
    """Copy the set, then in the copy: import the app, build the page on the embedded model (trained
    weights found), answer one question, and check that every project module came from the copy."""
    for f in deploy.upload_set():
        target = tmp_path / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / f.path, target)
    script = textwrap.dedent("""
        import sys, app
        from studio.hosting import HostingPolicy
        args = app.parse_args(["--no-warm-up"])
        policy = HostingPolicy.from_args(args, "127.0.0.1")
        studio = app.make_studio(args, policy)
        app.build_demo(studio, policy)
        entry = studio.registry.embedded()
        assert entry.trained, "embedded weights missing from the upload set"
        app.warm_up(studio)
        here = sys.argv[1]
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] in {"app", "v2drop", "studio", "visualize", "shapes"}:
                assert (module.__file__ or "").startswith(here), (name, module.__file__)
        print("SPACE-OK")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", V2DROP_SESSION_DIR=str(tmp_path / "sessions"))
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert "SPACE-OK" in run.stdout, run.stdout[-2000:] + run.stderr[-4000:]
    assert "warm-up failed" not in run.stderr, run.stderr[-4000:]
    help_run = subprocess.run([sys.executable, "app.py", "--help"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
    assert help_run.returncode == 0 and "--memory-budget" in help_run.stdout, help_run.stderr[-2000:]


@needs_git
def test_every_tracked_file_over_10_mb_is_lfs_routed():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    large = [p for p in files.decode().split("\0") if p and (ROOT / p).is_file()
             and (ROOT / p).stat().st_size > deploy.LFS_BYTES]
    assert WEIGHTS in large  # the check below covers the embedded weights at least
    attrs = subprocess.run(["git", "check-attr", "filter", "--", *large], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    routed = {line.split(": ")[0]: line.split(": ")[-1] for line in attrs}
    assert {p: routed[p] for p in large} == {p: "lfs" for p in large}


@needs_git
def test_new_weights_anywhere_are_lfs_routed():
    names = ["x/model.safetensors", "ckpt/pytorch_model.bin", "a/b/c.pt", "w.gguf", "d/data.parquet", "e.npz"]
    out = subprocess.run(["git", "check-attr", "filter", "--", *names], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.count(": filter: lfs") == len(names), out
    small = subprocess.run(["git", "check-attr", "filter", "--", "app.py", "assets/examples/coffee.png"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert "lfs" not in small


def test_dry_run_prints_files_and_sizes_and_sends_nothing(monkeypatch, capsys):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the dry run built a hub client")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    assert deploy.main(["someone/studio", "--dry-run", "--var", "V2DROP_MODELS=a/b"]) == 0
    out = capsys.readouterr().out
    size = (ROOT / WEIGHTS).stat().st_size
    assert f"{size:>12,}  {WEIGHTS}  (LFS on the hub: over 10 MB)" in out
    assert "V2DROP_MODELS=a/b" in out and "V2DROP_SESSION_TTL=600" in out
    assert "tests/" not in out and "dry run: nothing sent" in out


class RecordingApi:
    """A stand-in for ``huggingface_hub.HfApi`` that records the calls of a deploy."""

    def __init__(self, existing: list[str]) -> None:
        self.calls: list[tuple] = []
        self.existing = existing

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/spaces/{repo_id}"

    def request_space_hardware(self, repo_id, hardware):
        self.calls.append(("hardware", repo_id, hardware))

    def add_space_variable(self, repo_id, key, value):
        self.calls.append(("variable", repo_id, key, value))

    def list_repo_files(self, repo_id, repo_type=None):
        assert repo_type == "space"
        return list(self.existing)

    def create_commit(self, repo_id, operations, commit_message, repo_type=None):
        self.calls.append(("commit", repo_id, list(operations), repo_type))


def test_deploy_creates_the_space_sets_variables_and_uploads_exactly_the_set():
    files = deploy.upload_set()
    api = RecordingApi(existing=["README.md", ".gitattributes", "old_module.py", "tests/test_x.py"])
    url = deploy.deploy("someone/studio", files, {"V2DROP_MAX_MODELS": "1", "V2DROP_MODELS": "a/b"}, api,
                        hardware="cpu-basic")
    assert url == "https://huggingface.co/spaces/someone/studio"
    kinds = [c[0] for c in api.calls]
    assert kinds == ["create_repo", "hardware", "variable", "variable", "commit"]  # variables before the upload
    _, repo, kwargs = api.calls[0]
    assert repo == "someone/studio" and kwargs["repo_type"] == "space" and kwargs["space_sdk"] == "gradio"
    assert kwargs["exist_ok"] is True
    assert ("variable", "someone/studio", "V2DROP_MODELS", "a/b") in api.calls
    _, _, operations, repo_type = api.calls[-1]
    assert repo_type == "space"
    added = {op.path_in_repo: op for op in operations if type(op).__name__ == "CommitOperationAdd"}
    deleted = {op.path_in_repo for op in operations if type(op).__name__ == "CommitOperationDelete"}
    assert set(added) == {f.path for f in files}
    assert deleted == {"old_module.py", "tests/test_x.py"}  # the Space ends up holding exactly the set
    assert Path(added[WEIGHTS].path_or_fileobj) == ROOT / WEIGHTS


@pytest.mark.parametrize("argv", [["not-a-space"], ["a/b/c"], ["../x"], ["a/b", "--var", "NOEQUALS"],
                                  ["a/b", "--var", "1BAD=x"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit) as exit_info:
        deploy.parse_args(argv)
    assert exit_info.value.code == 2


# ------------------------------------------------------------------------------ the Docker image
# No Docker engine runs here, so the image is not built in the tests: these read the Dockerfile and
# .dockerignore for what decides whether the image can serve the app and load hub models.
def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def test_the_image_may_reach_the_hub_unless_built_offline():
    steps = _instructions(_dockerfile())
    assert "ARG HF_HUB_OFFLINE=0" in steps
    env = " ".join(s for s in steps if s.startswith("ENV "))
    assert "HF_HUB_OFFLINE=${HF_HUB_OFFLINE}" in env and "HF_HUB_OFFLINE=1" not in env
    args = {s.split()[1].split("=")[0] for s in steps if s.startswith("ARG ")}
    block = _dockerfile().split("# Build arguments", 1)[1].split("# Run-time environment", 1)[0]
    documented = set(re.findall(r"^#   ([A-Z_]+) ", block, flags=re.M))
    assert documented and documented <= args, documented - args  # every documented build argument exists
    assert any(s.startswith("RUN if [ -n \"${PRELOAD_MODELS}\" ]") and "snapshot_download" in s for s in steps)
    user = steps.index("USER app")
    assert any(i > user and "PRELOAD_MODELS" in s for i, s in enumerate(steps))  # the cache belongs to the app user


def test_the_image_runs_the_app_as_a_space_would():
    steps = _instructions(_dockerfile())
    assert steps[-1] == 'CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]'
    assert "USER app" in steps and any("--uid 1000" in s for s in steps) and "EXPOSE 7860" in steps
    assert any(s.startswith("COPY --chown=app:app . .") for s in steps)


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(prefix, pattern) for pattern in patterns for prefix in prefixes)


def test_the_image_holds_the_space_files_and_not_the_tests():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)  # the matcher below has no exceptions
    missing = [f.path for f in deploy.upload_set() if _ignored(f.path, patterns)]
    assert missing == []
    for left_out in ("tests/test_deploy.py", "docs/app.md", ".venv/bin/python",
                     "studio/__pycache__/app.cpython-311.pyc"):
        assert _ignored(left_out, patterns), left_out
