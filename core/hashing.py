"""Content hashes of files and model folders, remembered per (path, size, mtime) so large files are read once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from core.cache import cache_root


def _index() -> Path:
    return cache_root() / "hashes.json"


def read_sha256(path: str | Path) -> str:
    """sha256 of the file as it is now, read whole (no cache: for checking a download)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    index = _index()
    known: dict = {}
    if index.is_file():
        try:
            known = json.loads(index.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            known = {}
    if key in known:
        return known[key]
    digest = read_sha256(path)
    try:
        from core.rundir import atomic_write_json

        atomic_write_json(index, {**known, key: digest})
    except OSError:
        pass  # an unwritable cache only costs a re-hash next time
    return digest


MODEL_FILES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".gguf")


def folder_sha256(folder: str | Path) -> str:
    """One hash over a model folder's files (weights, config, tokenizer): the same model gives the same hash."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in MODEL_FILES and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            h.update(f"{p.relative_to(folder).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()
