"""Deploy the app to a Hugging Face Space in one command, over the hub's HTTP API.

    python -m studio.deploy OWNER/SPACE --dry-run    # the files and variables it would send; no network
    python -m studio.deploy OWNER/SPACE              # create the Space if needed, set its variables, upload
    python -m studio.deploy OWNER/SPACE --var V2DROP_MODELS=llava-hf/llava-onevision-qwen2-0.5b-ov-hf --private

It uploads exactly what the Space runs (:data:`RUNTIME`: ``app.py``, the README whose front matter
configures the Space, ``requirements.txt``, ``.gitattributes``, the packages ``v2drop``, ``studio``,
``visualize`` and ``shapes``, and ``assets/`` with the embedded model's weights), the files there that
git tracks or does not ignore (``--dry-run`` lists them), in one commit that also deletes whatever
else the Space holds. The hub stores the weights and every other large or binary file through LFS
on its side. Tests, docs, benchmarks and local environments stay behind.

Why not ``git push``: the hub refuses a push whose history holds a file over 10 MB outside LFS, and
this repository's history holds eight plain-git versions of ``assets/shapes-llava/model.safetensors``
(27.5 MB). ``.gitattributes`` routes weights through LFS from now on, but rewriting history would break
every existing clone, so the Space gets a fresh upload instead (its own history starts here).

The token comes from ``--token``, ``HF_TOKEN`` or ``huggingface-cli login``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["RUNTIME", "DEFAULT_VARIABLES", "SpaceFile", "upload_set", "describe", "deploy", "main"]

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ("app.py", "README.md", "requirements.txt", ".gitattributes",
           "v2drop/", "studio/", "visualize/", "shapes/", "assets/")
# a free CPU Space (2 vCPU, 16 GB): free idle sessions sooner, keep one hub model beside the embedded one
DEFAULT_VARIABLES = {"V2DROP_SESSION_TTL": "600", "V2DROP_MAX_SESSIONS": "50", "V2DROP_MAX_MODELS": "1"}
LFS_BYTES = 10 * 1000 * 1000  # the hub's limit for a plain-git file
_SPACE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SpaceFile:
    """One file of the upload: its path in the repository (and the Space) and its size."""

    path: str
    size: int

    @property
    def large(self) -> bool:
        return self.size > LFS_BYTES


def _tracked(root: Path) -> list[str] | None:
    """Files git tracks under ``root``, and new ones it does not ignore (None outside a git checkout
    or without git): what the checkout runs, without caches, environments or ignored outputs."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [p for p in out.decode().split("\0") if p]


def _walk(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


def _wanted(path: str) -> bool:
    if "__pycache__" in path.split("/") or path.endswith((".pyc", ".pyi")):
        return False
    return any(path == entry or (entry.endswith("/") and path.startswith(entry)) for entry in RUNTIME)


def upload_set(root: Path = ROOT) -> list[SpaceFile]:
    """What the Space needs: the files under :data:`RUNTIME` that git tracks or does not ignore
    (every file there outside a git checkout), sorted, with their sizes."""
    files = _tracked(root)
    files = _walk(root) if files is None else files
    return [SpaceFile(p, (root / p).stat().st_size) for p in sorted(set(files))
            if _wanted(p) and (root / p).is_file()]


def describe(files: Sequence[SpaceFile], variables: dict[str, str]) -> str:
    """The upload set and the variables as a table for the terminal."""
    lines = [f"{'size':>12}  path"]
    lines += [f"{f.size:>12,}  {f.path}" + ("  (LFS on the hub: over 10 MB)" if f.large else "") for f in files]
    lines.append(f"{sum(f.size for f in files):>12,}  in {len(files)} files")
    lines.append("variables: " + (", ".join(f"{k}={v}" for k, v in variables.items()) or "none"))
    return "\n".join(lines)


def deploy(space_id: str, files: Sequence[SpaceFile], variables: dict[str, str], api: Any,
           root: Path = ROOT, private: bool | None = None, hardware: str | None = None,
           message: str = "Deploy V²Drop Studio") -> str:
    """Create the Space (Gradio SDK) if it does not exist, set its variables, then upload ``files`` in
    one commit that also deletes every other file of the Space. ``api`` is a
    :class:`huggingface_hub.HfApi`. Returns the Space's URL."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    url = api.create_repo(space_id, repo_type="space", space_sdk="gradio", exist_ok=True, private=private)
    if hardware:
        api.request_space_hardware(space_id, hardware)
    for key, value in variables.items():  # before the upload, so that the first build starts with them
        api.add_space_variable(space_id, key, value)
    keep = {f.path for f in files}
    stale = [p for p in api.list_repo_files(space_id, repo_type="space") if p not in keep]
    operations = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(root / f.path)) for f in files]
    operations += [CommitOperationDelete(path_in_repo=p) for p in stale]
    api.create_commit(space_id, operations, commit_message=message, repo_type="space")
    return str(url)


def _variables(pairs: Sequence[str], defaults: bool) -> dict[str, str]:
    variables = dict(DEFAULT_VARIABLES) if defaults else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _VARIABLE.match(key):
            raise ValueError(f"--var takes KEY=VALUE, got {pair!r}")
        variables[key] = value
    return variables


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("space", metavar="OWNER/SPACE", help="the Space to create or update")
    parser.add_argument("--dry-run", action="store_true", help="print the upload set and variables; no network")
    parser.add_argument("--var", action="append", default=[], metavar="KEY=VALUE",
                        help="a Space variable (repeatable; overrides the defaults: "
                             + ", ".join(f"{k}={v}" for k, v in DEFAULT_VARIABLES.items()) + ")")
    parser.add_argument("--no-default-vars", action="store_true", help="set only the --var variables")
    parser.add_argument("--private", action="store_true", default=None, help="create the Space private")
    parser.add_argument("--hardware", default=None, help="request this hardware, e.g. cpu-basic, cpu-upgrade, "
                                                         "zero-a10g, t4-small (default: the Space's current one)")
    parser.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--message", default="Deploy V²Drop Studio", help="commit message")
    args = parser.parse_args(argv)
    if not _SPACE_ID.match(args.space) or ".." in args.space:
        parser.error(f"expected OWNER/SPACE, got {args.space!r}")
    try:
        args.variables = _variables(args.var, not args.no_default_vars)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    files = upload_set()
    print(describe(files, args.variables))
    if args.dry_run:
        print(f"dry run: nothing sent to {args.space}")
        return 0
    from huggingface_hub import HfApi

    api = HfApi(token=args.token or os.environ.get("HF_TOKEN") or None)
    url = deploy(args.space, files, args.variables, api, private=args.private, hardware=args.hardware,
                 message=args.message)
    print(f"deployed to {url} (the Space builds and restarts now)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
