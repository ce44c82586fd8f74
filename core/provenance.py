"""What produced a run folder: seal-tt's version and commit, library versions, each model's content, the machine.

Claims such as "the same self-edits give the same adapter, bitwise at the same thread count" only hold between runs
that agree on these, so every run folder records them in `provenance.json`: the first start as `created`, and each
resume appended to `resumed` (a run resumed under other versions says so).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

NAME = "provenance.json"
LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "deepspeed", "datasets", "gguf", "tokenizers")
REPO = Path(__file__).resolve().parents[1]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def code_commit() -> dict:
    """The git commit of this checkout and whether tracked files differ from it (None outside a git checkout)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def model_identity(name: str) -> dict:
    """A model's content: a GGUF file's or a folder's sha256, or a hub id's cached revision."""
    from core.gguf import gguf_file
    from core.hashing import file_sha256, folder_sha256

    if not name:
        return {"path": name}
    p = Path(name).expanduser()
    found = gguf_file(p) if p.exists() else None
    if found is not None:
        return {"path": name, "gguf_sha256": file_sha256(found)}
    if p.is_dir():
        return {"path": name, "sha256": folder_sha256(p)}
    try:  # a hub id: the snapshot (commit) the local cache holds, which is what offline loading uses
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str) and "/snapshots/" in cached:
            return {"path": name, "hub_revision": cached.split("/snapshots/")[1].split("/")[0]}
    except Exception:  # noqa: BLE001 - provenance never stops a run
        pass
    return {"path": name, "hub_revision": None}


def machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": torch.version.cuda if cuda else None,
        "torch_threads": torch.get_num_threads(),
    }


def collect(models: dict[str, dict]) -> dict:
    """`models`: role -> {"path", "dtype", ...} as configured."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seal_tt": {"version": _version("seal-tt"), **code_commit()},
        "libraries": {lib: _version(lib) for lib in LIBRARIES},
        "models": {role: {**info, **model_identity(info.get("path", ""))} for role, info in models.items()},
        "machine": machine(),
        "argv": sys.argv,
    }


def record(run_path: str | Path, models: dict[str, dict]) -> dict:
    """Write (or extend, on a resume) `provenance.json` in a run folder; returns this start's entry."""
    from core.rundir import atomic_write_json

    path = Path(run_path) / NAME
    entry = collect(models)
    data = {"created": entry, "resumed": []}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data.setdefault("resumed", []).append(entry)
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = {"created": None, "unreadable_earlier_record": True, "resumed": [entry]}
    atomic_write_json(path, data)
    return entry


def model_settings(settings) -> dict:
    """The fields of a ModelSettings that bear on reproducing a run."""
    return {"path": settings.path, "dtype": settings.dtype, "device": settings.device}
