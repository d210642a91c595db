"""The operator's launch policy: which models a visitor may load, and whether their code may run.

A visitor only ever picks or types a model id; whether it is loaded is decided here, from launch
options the operator set (CLI flags or environment variables, see :func:`add_arguments`). On a public
host (``SPACE_ID`` set, or any interface other than 127.0.0.1 / localhost) the defaults are: the
operator's list only, no typed hub ids, no local folders, no remote code. On 127.0.0.1 a single user
may also type hub ids. Local folders and remote code need the operator's flags everywhere, and a
folder that holds uploads (Gradio's upload cache, the app's session files) is never a model.

Refusals are one plain sentence that names no server path and does not depend on what exists on
disk, so they tell a visitor nothing about the server's files.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from studio.registry import EMBEDDED_IDS, SUGGESTED_MODELS, is_embedded_id

__all__ = ["HostingPolicy", "add_arguments", "is_public_host", "upload_dirs", "DEFAULT_MODELS"]

DEFAULT_MODELS = tuple(SUGGESTED_MODELS)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}

REFUSED_UNLISTED = "This server only loads the models in its list; pick one of them."
REFUSED_FOLDER = "This server does not load models from local folders; pick one of the listed models."
REFUSED_UPLOAD = "Uploaded files cannot be loaded as a model; pick one of the listed models."
REFUSED_REMOTE_CODE = "The operator has not allowed remote code for this model, so it cannot be loaded with it."
REFUSED_SHAPE = "That does not look like a model id (expected 'owner/name')."


def is_public_host(host: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether the app is reachable by others: on Hugging Face Spaces, or on any interface but loopback."""
    env = os.environ if env is None else env
    return bool(env.get("SPACE_ID")) or host.strip().lower() not in LOCAL_HOSTS


def upload_dirs(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """Folders where visitors' files land: Gradio's upload cache and the app's session files."""
    env = os.environ if env is None else env
    gradio_dir = env.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    session_dir = env.get("V2DROP_SESSION_DIR") or str(Path(tempfile.gettempdir()) / "v2drop-studio")
    return tuple(dict.fromkeys([_real(gradio_dir), _real(session_dir),
                                _real(Path(tempfile.gettempdir()) / "v2drop-studio")]))


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def looks_like_path(model_id: str) -> bool:
    """A folder-like id: absolute, relative with ./ ../ ~, a Windows path, or more than one slash.
    (``owner/name`` is read as a hub id, and a bare ``name`` is no valid id at all.)"""
    return (model_id.startswith(("/", ".", "~", "\\")) or "\\" in model_id or ":" in model_id
            or model_id.count("/") > 1)


@dataclass(frozen=True)
class HostingPolicy:
    """What visitors may load. ``models`` is the operator's list (the embedded models are always in it);
    ``trusted`` the ids whose repository code may run (``trust_remote_code``)."""

    models: tuple[str, ...] = (*EMBEDDED_IDS, *DEFAULT_MODELS)
    allow_hub_ids: bool = False
    allow_local_folders: bool = False
    trusted: frozenset[str] = frozenset()
    public: bool = True
    blocked_dirs: tuple[Path, ...] = field(default_factory=upload_dirs)
    monitoring: bool = False  # Gradio's /monitoring routes (per-endpoint counts and latencies)

    @property
    def remote_code_enabled(self) -> bool:
        """Whether the page shows the *trust remote code* checkbox at all."""
        return bool(self.trusted)

    def trusts(self, model_id: str) -> bool:
        return model_id.strip() in self.trusted

    def allows(self, model_id: str, trust_remote_code: bool = False) -> str | None:
        """``None`` if a visitor may load ``model_id`` (with remote code if asked), else why not: one
        sentence for the page, the same whether or not such a path exists."""
        model_id = (model_id or "").strip()
        if not model_id or is_embedded_id(model_id):
            return None
        if len(model_id) > 200 or any(c in model_id for c in "\n\r\t\0"):
            return REFUSED_SHAPE
        if trust_remote_code and not self.trusts(model_id):
            return REFUSED_REMOTE_CODE
        if looks_like_path(model_id):
            return self._folder_reason(model_id)
        if model_id in self.models or model_id in self.trusted:
            return None
        if not _HUB_ID.match(model_id) or ".." in model_id:
            return REFUSED_SHAPE
        if not self.allow_hub_ids:
            return REFUSED_UNLISTED
        return None  # loaded from the hub only (see hub_only): what exists on this disk changes nothing

    def hub_only(self, model_id: str) -> bool:
        """Whether ``model_id`` is a visitor's typed hub id, to be read from the hub (or its cache) only,
        never from a relative folder of the same name here: such a folder would load, or fail with
        another message, and tell a visitor which folders exist on the server."""
        model_id = (model_id or "").strip()
        return (not self.allow_local_folders and not looks_like_path(model_id) and not is_embedded_id(model_id)
                and model_id not in self.models and model_id not in self.trusted)

    def _folder_reason(self, model_id: str) -> str | None:
        path = _real(model_id)
        if any(_is_within(path, folder) for folder in self.blocked_dirs):
            return REFUSED_UPLOAD
        if model_id in self.models or self.allow_local_folders:
            return None
        return REFUSED_FOLDER

    def choices(self) -> list[str]:
        """The dropdown's entries: the operator's list, the embedded models first (the default first)."""
        return list(dict.fromkeys([*EMBEDDED_IDS, *self.models, *sorted(self.trusted)]))

    def describe(self) -> str:
        """One line for the start-up log (no secrets: ids and switches only)."""
        return (f"hosting: {'public' if self.public else 'local'}; {len(self.choices())} listed models; "
                f"typed hub ids {'on' if self.allow_hub_ids else 'off'}; local folders "
                f"{'on' if self.allow_local_folders else 'off'}; remote code for "
                f"{', '.join(sorted(self.trusted)) or 'no model'}; monitoring {'on' if self.monitoring else 'off'}")

    @classmethod
    def from_args(cls, args: argparse.Namespace, host: str, env: Mapping[str, str] | None = None) -> "HostingPolicy":
        """The policy from parsed :func:`add_arguments` options; unset ones fall back to the
        environment, then to the safe default for ``host``."""
        env = os.environ if env is None else env
        public = is_public_host(host, env)
        listed = _split(args.models if args.models is not None else env.get("V2DROP_MODELS"))
        trusted = _split(args.trust_remote_code if args.trust_remote_code is not None
                         else env.get("V2DROP_TRUST_REMOTE_CODE"))
        hub = _flag(args.allow_hub_ids, env.get("V2DROP_ALLOW_HUB_IDS"), default=not public)
        folders = _flag(args.allow_local_folders, env.get("V2DROP_ALLOW_LOCAL_FOLDERS"), default=False)
        monitoring = _flag(getattr(args, "monitoring", None), env.get("V2DROP_MONITORING"), default=not public)
        models = tuple(dict.fromkeys([*EMBEDDED_IDS, *(listed if listed is not None else DEFAULT_MODELS)]))
        return cls(models=models, allow_hub_ids=hub, allow_local_folders=folders,
                   trusted=frozenset(trusted or ()), public=public, blocked_dirs=upload_dirs(env),
                   monitoring=monitoring)


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _flag(cli: bool | None, env_value: str | None, default: bool) -> bool:
    if cli is not None:
        return cli
    if env_value is None:
        return default
    value = env_value.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"expected 1/0/true/false/yes/no/on/off, got {env_value!r}")
    return value in _TRUE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The hosting options of ``python app.py``; each has an environment variable."""
    group = parser.add_argument_group("hosting (who may load what; safe defaults on a public host)")
    group.add_argument("--models", default=None, metavar="ID,ID,…",
                       help="models visitors may pick, comma-separated hub ids or operator folders "
                            "(env V2DROP_MODELS; default: the five suggested hub models; the embedded models are "
                            "always listed)")
    group.add_argument("--allow-hub-ids", dest="allow_hub_ids", action=argparse.BooleanOptionalAction,
                       default=None, help="visitors may type other hub ids (env V2DROP_ALLOW_HUB_IDS; default: "
                                          "on for 127.0.0.1/localhost, off on a public host or Space)")
    group.add_argument("--allow-local-folders", dest="allow_local_folders", action=argparse.BooleanOptionalAction,
                       default=None, help="visitors may type local model folders; folders holding uploads are "
                                          "always refused (env V2DROP_ALLOW_LOCAL_FOLDERS; default: off)")
    group.add_argument("--trust-remote-code", default=None, metavar="ID,ID,…",
                       help="models whose repository code may run (trust_remote_code); the page shows the "
                            "checkbox only when this is set (env V2DROP_TRUST_REMOTE_CODE; default: none)")
    group.add_argument("--monitoring", dest="monitoring", action=argparse.BooleanOptionalAction, default=None,
                       help="Gradio's /monitoring routes, which tell anyone per-endpoint request counts and "
                            "latencies (env V2DROP_MONITORING; default: on for 127.0.0.1/localhost, off on a "
                            "public host or Space)")
