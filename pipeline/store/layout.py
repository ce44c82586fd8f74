"""The knowledge store on disk: one folder per student, changed only by whole committed updates.

    STORE/
      store.json          what the store is: format, version, the settings fixed at creation (student, strategy, ...)
      state.json          the committed state: documents (versions, probes, which update holds them), the updates,
                          the score matrix; replaced in one rename at the end of each update (the commit point)
      documents/<hash>.json   each absorbed document version: id, title, text, probes, its training texts and the
                              passages they were written for
      updates/NNNN/       one committed update: update.json (its report), edits.jsonl (the self-edits it absorbed),
                          adapter/ (its LoRA, safetensors), report.md
      .pending/           the update in progress: job.json (its documents, and what writes each one's self-edits),
                          self-edits as the teacher writes them, a training checkpoint; a rerun after a crash
                          continues it per document (`pending`); gone once the update is committed
      .lock               held while an update runs, so two scheduled runs never touch the store at once

An update folder that exists but is not named in state.json was being committed when the process died: it is
removed and redone from `.pending`. Nothing else is ever rewritten in place. The JSON files are read and written
as the types of `state`, there only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from core.errors import UserError
from core.rundir import atomic_write_json, fsync_dir, fsync_tree
from pipeline.store.state import Manifest, PendingJob, StoreState, StoredDocument, Version

FORMAT = "seal-tt-store"
VERSION = 1


class StoreBusy(UserError):
    """Another process holds the store's lock."""


def empty_state() -> StoreState:
    return StoreState()


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    # ------------------------------------------------------------------------------------------------ paths
    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def pending(self) -> Path:
        return self.path / ".pending"

    def update_dir(self, number: int) -> Path:
        return self.path / "updates" / f"{number:04d}"

    def document_file(self, key: str) -> Path:
        import hashlib

        return self.path / "documents" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"

    def read_document(self, key: str) -> StoredDocument:
        path = self.document_file(key)
        if not path.is_file():
            raise UserError(f"{self.path}: the stored copy of document {key!r} is missing ({path.name})")
        return StoredDocument.from_json(_read_json(path, f"document {key}"))

    def write_document(self, doc: StoredDocument) -> None:
        atomic_write_json(self.document_file(doc.key), doc.to_json())

    @property
    def job_file(self) -> Path:
        return self.pending / "job.json"

    def pending_job(self) -> PendingJob | None:
        """The update in progress, as recorded when it started (None when there is none, or it cannot be read)."""
        if not self.job_file.is_file():
            return None
        try:
            data = json.loads(self.job_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return PendingJob.from_json(data) if isinstance(data, dict) and "number" in data else None

    def write_pending_job(self, job: PendingJob) -> None:
        self.pending.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.job_file, job.to_json())

    # ------------------------------------------------------------------------------------------ validation
    @property
    def exists(self) -> bool:
        return (self.path / "store.json").is_file()

    def check_new_location(self) -> None:
        """A store is created only in a missing or empty folder: nothing of the user's is ever overwritten."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"store {self.path} exists and is not a folder")
        if self.path.is_dir() and any(p.name != ".lock" for p in self.path.iterdir()):
            raise UserError(f"{self.path} is not empty and is not a seal-tt store (no store.json); "
                            "choose another --store")

    def manifest(self) -> Manifest:
        path = self.path / "store.json"
        if not path.is_file():
            if self.path.is_dir() and any(self.path.iterdir()):
                raise UserError(f"{self.path} is not a seal-tt store (no store.json)")
            raise UserError(f"no store at {self.path} (run `seal-tt update --store {self.path} --docs ...` first)")
        data = _read_json(path, "store.json")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path} is not a seal-tt store manifest (format {data.get('format') if isinstance(data, dict) else None!r})")
        if data.get("version") != VERSION:
            raise UserError(f"{self.path} is a store of version {data.get('version')}; this seal-tt reads version {VERSION}")
        return Manifest.from_json(data)

    def state(self) -> StoreState:
        path = self.path / "state.json"
        if not path.is_file():
            return empty_state()
        data = _read_json(path, "state.json")
        missing = [k for k in StoreState.REQUIRED if k not in data] if isinstance(data, dict) else ["(all)"]
        if missing:
            raise UserError(f"{path} is damaged (it lacks {', '.join(missing)}); the store was not changed")
        try:
            state = StoreState.from_json(data)
        except (TypeError, AttributeError) as err:
            raise UserError(f"{path} is damaged ({err}); the store was not changed") from None
        for u in state.updates:
            if not (self.update_dir(u.number) / "update.json").is_file():
                raise UserError(f"{self.path}: update {u.number} is named in state.json but its folder is missing")
        return state

    # ---------------------------------------------------------------------------------------------- writes
    def create(self, settings: dict) -> Manifest:
        self.check_new_location()
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(format=FORMAT, version=VERSION, created=now(), settings=settings)
        atomic_write_json(self.path / "store.json", manifest.to_json())
        return manifest

    def commit(self, number: int, staged: Path, state: StoreState) -> None:
        """Move a finished update folder into place, then write the new state: the update exists from that rename.

        Each step is on disk before the next: after a power loss, state.json never names an update whose adapter
        is still empty or missing (the page cache may write files out in any order)."""
        target = self.update_dir(number)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        fsync_tree(staged)
        os.replace(staged, target)
        fsync_dir(target.parent)
        if (self.path / "documents").is_dir():  # the document copies the new state names
            fsync_dir(self.path / "documents")
        atomic_write_json(self.path / "state.json", state.to_json())
        fsync_dir(self.path)
        shutil.rmtree(self.pending, ignore_errors=True)

    def drop_uncommitted(self, state: StoreState) -> list[int]:
        """Update folders that a crash left between their rename and the state's: removed, to be redone."""
        known = {u.number for u in state.updates}
        dropped = []
        root = self.path / "updates"
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            if folder.name.isdigit() and int(folder.name) not in known:
                shutil.rmtree(folder)
                dropped.append(int(folder.name))
        return dropped

    # ------------------------------------------------------------------------------------------------ lock
    @contextmanager
    def locked(self, *, wait: bool = False):
        """Hold the store's lock for the block; a second process refuses (or, with `wait`, waits its turn)."""
        from core.lock import folder_lock

        with folder_lock(self.path, wait=wait, error=StoreBusy,
                         busy="store {path} is being updated by {holder}; not starting a second update "
                              "(pass --wait to wait for it)"):
            yield


def active_documents(state: StoreState) -> dict[str, Version]:
    """Document version key -> its version, for the current version of every absorbed document (absorption order)."""
    return state.active()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is damaged ({what} is not valid JSON); the store was not changed") from None
