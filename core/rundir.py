"""Run directories: atomic files, append-only JSONL records, and a resolved config that guards resumes.

A run directory is the unit of work a user can kill and restart. Files appear whole or not at all (written to a
temporary name in the same folder, then renamed); records are appended one line at a time and flushed, so a killed
run loses at most the record in flight; a torn last line is dropped on read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from core.config import dump_yaml, to_dict
from core.errors import UserError
from core.lock import LOCK_NAME, FolderBusy

CONFIG_NAME = "config.yaml"

# Defaults changed since run folders were written: (dotted key, the old default, the new one). A run made on the old
# default and resumed with the key at the new one keeps the value it was made with, as its records were made with it
# (an earlier run folder resumes without --force). student.eval.metric: "auto" since benchmarks/grader_check.
CHANGED_DEFAULTS = (("student.eval.metric", "token_f1", "auto"),)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """`path` holds `data` whole or is left as it was: written to a hidden temporary beside it, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@contextmanager
def atomic_dir(path: str | Path, *, internal: bool = False):
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename.

    By default `path` is an output a user may have named: the new folder carries seal-tt's marker
    (`core.outputs`), and an existing `path` is replaced only if empty or marked, never a folder seal-tt did not
    write. `internal=True`: a folder inside seal-tt's own run folders or caches (a checkpoint, an adapter, a
    conversion), swapped whatever it holds, as a resume rewrites it.
    """
    from core.outputs import replaceable, write_marker

    path = Path(path)
    if not internal and path.exists() and not replaceable(path):
        raise UserError(f"{path} exists and was not written by seal-tt: it is never replaced; choose another folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if not internal:
            write_marker(tmp)
            # Checked again: the folder may have appeared, or filled, while the output was written.
            if path.exists() and not replaceable(path):
                raise UserError(f"{path} was filled by someone else while seal-tt wrote it; nothing was replaced "
                                "(choose another folder)")
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_jsonl(path: str | Path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Records written so far; a last line cut by a kill is ignored (and later overwritten by the resume)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise UserError(f"{path}: line {i + 1} is not valid JSON (the run directory is damaged)") from None
    return records


def repair_jsonl(path: str | Path) -> None:
    """Rewrite `path` without a torn last line, so appends after a resume start on a clean line."""
    path = Path(path)
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in read_jsonl(path)))


def complete_groups(path: str | Path, key, k: int) -> dict[str, list[dict]]:
    """The records of `path` grouped by `record[key]` (or `key(record)` for a callable), keeping the groups of
    exactly k records.

    A group cut short by a kill, and a torn last line, are removed from the file too, so that a resume draws the
    group again whole and appends on a clean line.
    """
    path = Path(path)
    groups: dict[str, list[dict]] = {}
    for rec in read_jsonl(path):
        groups.setdefault(key(rec) if callable(key) else rec[key], []).append(rec)
    complete = {g: recs for g, recs in groups.items() if len(recs) == k}
    if len(complete) != len(groups) or (path.exists() and not path.read_text(encoding="utf-8").endswith("\n")):
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                        for recs in complete.values() for r in recs))
    return complete


# What a run folder holds before any work is done: its settings, where it came from, how its data were split, the
# lock of the process writing it, tracker logs. Anything else is finished work (a record, an adapter, a
# checkpoint), and is never deleted.
SCAFFOLDING = frozenset({CONFIG_NAME, "provenance.json", "splits.json", LOCK_NAME})
LOGS = frozenset({"tensorboard", "wandb"})


def holds_finished_work(path: str | Path) -> bool:
    """Whether the run folder `path` holds any finished work: a non-empty file other than its scaffolding."""
    path = Path(path)
    if not path.is_dir():
        return False
    for item in path.rglob("*"):
        rel = item.relative_to(path)
        if rel.parts[0] in LOGS or (len(rel.parts) == 1 and rel.name in SCAFFOLDING):
            continue
        if item.is_file() and not item.is_symlink() and item.stat().st_size > 0:
            return True
    return False


@contextmanager
def removed_on_user_error(path: str | Path):
    """A run folder this call creates is removed again if a user error stops it before any work is finished;
    once something is finished it stays (a rerun resumes from it), and the error says so. A folder another process
    holds (`FolderBusy`) is never touched: it is that process's."""
    path = Path(path)
    created = not path.exists()
    try:
        yield
    except UserError as err:
        if not created or isinstance(err, FolderBusy):
            raise
        if not holds_finished_work(path):
            shutil.rmtree(path, ignore_errors=True)
            raise
        raise UserError(f"{err}; the finished work in {path} was kept: the same command with the same --output "
                        "resumes from it (--force to change a setting)") from None


def finished_report(run: "RunDir", name: str, force: bool) -> dict | None:
    """The report of a run that already finished (reused unless forced), else None."""
    path = run / name
    if path.exists() and not force:
        from core.progress import say

        say(f"{run.path} is complete; its report is reused (pass --force to redo it)")
        return json.loads(path.read_text(encoding="utf-8"))
    return None


class RunDir:
    """An output folder with a resolved config; a second run with another config is refused unless forced."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def exists(self) -> bool:
        return self.path.exists() and any(self.path.iterdir())

    def check_writable(self) -> None:
        from core.outputs import check_writable

        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"output {self.path} exists and is not a folder")
        check_writable(self.path)

    def start(self, config, *, force: bool = False, ignore: tuple[str, ...] = ()) -> bool:
        """Create or reopen the run. Returns True when resuming an existing run."""
        self.check_writable()
        text = dump_yaml(config)
        saved = self.path / CONFIG_NAME
        if saved.exists():
            import yaml

            old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
            if keep_changed_defaults(config, old):
                text = dump_yaml(config)
            new = to_dict(config)
            # A run folder that was moved or copied is the same run: where it lives is not one of its settings
            # (checkpoints inside it are found relative to it).
            # A setting added since the run was made, at its default, is no change: the run resumes.
            diff = _diff(old, new, ignore=("output", *ignore), defaults=to_dict(type(config)()))
            if diff and not force:
                shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
                raise UserError(
                    f"{self.path} holds a run with another config ({shown}); use another --output, or --force to resume with the new config"
                )
            if saved.read_text(encoding="utf-8") != text:
                atomic_write_text(saved, text)
            return True
        self.check_ours()
        atomic_write_text(saved, text)
        return False

    def check_ours(self) -> None:
        """A folder that holds something and no run of seal-tt's (no config.yaml) is a user's: never written."""
        if (self.path.exists() and not (self.path / CONFIG_NAME).exists()
                and any(p.name not in (".work", LOCK_NAME) for p in self.path.iterdir())):
            raise UserError(f"output folder {self.path} is not empty and holds no seal-tt run; choose another --output")


def keep_changed_defaults(config, old: dict) -> list[str]:
    """Set back on `config` (in place) each `CHANGED_DEFAULTS` key the saved config `old` holds at its old default
    while `config` holds the new one; returns the keys kept."""
    kept = []
    for dotted, was, now in CHANGED_DEFAULTS:
        *parents, name = dotted.split(".")
        node, saved = config, old
        for part in parents:
            node = getattr(node, part, None)
            saved = saved.get(part) if isinstance(saved, dict) else None
        if node is None or not isinstance(saved, dict) or saved.get(name) != was or getattr(node, name, None) != now:
            continue
        setattr(node, name, was)
        kept.append(dotted)
        from core.progress import say

        say(f"resuming a run made with {dotted}={was} (then the default): it keeps it (the default is now {now})")
    return kept


def _diff(old, new, prefix="", ignore=(), defaults=None) -> list[str]:
    out = []
    keys = set(old) | set(new) if isinstance(old, dict) and isinstance(new, dict) else None
    if keys is None:
        return [] if old == new or prefix.rstrip(".") in ignore else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]
    defaults = defaults if isinstance(defaults, dict) else {}
    for k in sorted(keys):
        key = f"{prefix}{k}"
        if key in ignore:
            continue
        if k not in old and k in defaults and new.get(k) == defaults[k]:
            continue
        if isinstance(old.get(k), dict) and isinstance(new.get(k), dict):
            out += _diff(old[k], new[k], key + ".", ignore, defaults.get(k))
        elif old.get(k) != new.get(k):
            out.append(f"{key}: {old.get(k)!r} -> {new.get(k)!r}")
    return out


def fsync_tree(path: str | Path) -> None:
    """Every file and folder under `path` (and `path`) on disk, not only in the page cache: what a rename of it or
    a record naming it is about to commit survives a power loss whole."""
    path = Path(path)
    if path.is_dir():
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                _fsync(Path(root) / name, os.O_RDONLY)
            for name in dirs:
                if not (Path(root) / name).is_symlink():
                    fsync_dir(Path(root) / name)
        fsync_dir(path)
    else:
        _fsync(path, os.O_RDONLY)


def fsync_dir(path: str | Path) -> None:
    """A folder's entries (a rename into it, a file created in it) on disk."""
    _fsync(Path(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
