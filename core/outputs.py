"""Folders a user names as a whole output (`merge --output`, `convert-gguf FILE DIR`): seal-tt never deletes what
it did not write.

Every such folder gets a marker file when written. An existing, non-empty folder is refused unless forced, and
even forced only one with the marker is replaced: a user's own folder (or `~`) is never renamed away or deleted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from core.errors import UserError

MARKER = ".seal-tt-output"


def write_marker(folder: str | Path) -> None:
    from importlib import metadata

    try:
        version = metadata.version("seal-tt")
    except metadata.PackageNotFoundError:
        version = None
    record = {"written_by": "seal-tt", "version": version, "command": " ".join(sys.argv[1:3]) or None,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (Path(folder) / MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


def written_by_seal_tt(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def is_empty_dir(folder: Path) -> bool:
    return folder.is_dir() and not any(folder.iterdir())


def replaceable(folder: str | Path) -> bool:
    """Whether an existing `folder` may be replaced as a whole: empty, or written by seal-tt."""
    folder = Path(folder)
    return folder.is_dir() and not folder.is_symlink() and (is_empty_dir(folder) or written_by_seal_tt(folder))


def check_writable(path: str | Path, what: str = "output") -> None:
    """`path` can be created or written: its nearest existing folder accepts new entries."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be written: no write permission in {probe}")


def check_output_folder(path: str | Path, *, force: bool, flag: str = "--output") -> Path:
    """A whole-folder output the user names, checked before any model loads (seconds, not minutes)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a folder")
    if path.is_dir() and not is_empty_dir(path):
        if not written_by_seal_tt(path) or path.is_symlink():
            raise UserError(f"{flag} {path} exists, is not empty and was not written by seal-tt (no {MARKER} in it); "
                            "seal-tt never replaces such a folder, even with --force: choose another folder")
        if not force:
            raise UserError(f"{flag} {path} exists (written by seal-tt earlier); pass --force to replace it, "
                            "or choose another folder")
    # The new folder is written beside the target and renamed over it: its parent must take new entries.
    check_writable(path.parent if not path.exists() else path.resolve().parent, flag)
    return path
