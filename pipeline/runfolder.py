"""A run folder's lifecycle, one piece for every command that writes one (adapt-student, its ARC task, train-teacher
and the demo): open it as its only writer, resume or refuse, reuse a finished report, record provenance.

    with open_run(config.output, config, force=force, wait=wait, report="report.json",
                  models={"student": config.student.model}) as run:
        if run.finished is not None:
            return run.finished
        ... the work, written into run.dir ...

In order: the folder must be writable; one writer at a time (`<folder>/.lock`, held until the block ends or the
process dies; a second run exits naming the first, or with `wait` waits its turn); the resolved config is
written, or compared with the saved one (another config is refused unless forced); a finished report is reused
unless forced (one that left failed items out is redone); the models' provenance is recorded. A folder this call
created is removed again if a user error stops the run before any work is finished.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.lock import FolderBusy, folder_lock
from core.rundir import RunDir, finished_report, removed_on_user_error


class RunBusy(FolderBusy):
    """Another process writes the run folder."""


@contextmanager
def run_lock(path: str | Path, *, wait: bool = False):
    """Hold the run folder's lock for the block: a second run on it exits 2 naming the first (pid, start time), or
    with `wait` waits for it. The kernel releases the lock when its holder dies, however it dies."""
    with folder_lock(Path(path).expanduser(), wait=wait, error=RunBusy,
                     busy="{path} is in use by another seal-tt run ({holder}); not starting a second one there "
                          "(pass --wait to wait for it, or choose another --output)"):
        yield


@dataclass
class OpenRun:
    dir: RunDir
    finished: dict | None = None  # the report of a run that already finished (reused unless forced)


@contextmanager
def open_run(path: str | Path, config, *, force: bool = False, wait: bool = False, ignore: tuple[str, ...] = (),
             report: str | None = None, models: dict | None = None):
    """Open (or reopen) the run folder `path` for `config` and hold it for the block; yields an `OpenRun`.

    `ignore`: config keys a resume may change (where the work runs, how many rounds). `report`: the file a finished
    run leaves; when it exists (and not `force`) it is read back as `finished` and nothing else happens. `models`:
    role -> ModelSettings (None: not used by this run), recorded in provenance.json on every start."""
    run = RunDir(path)
    run.check_writable()
    run.check_ours()  # before the lock file is made in it
    with removed_on_user_error(run.path), run_lock(run.path, wait=wait):
        run.start(config, force=force, ignore=ignore)
        finished = None
        if report is not None:
            # A report that left items out (they failed every try) is redone: those items are tried again.
            finished = finished_report(run, report, force or bool(failed_items(run / report)))
        if finished is None and models:
            record_models(run.path, models)
        yield OpenRun(run, finished)


def record_models(path: str | Path, models: dict) -> dict:
    """provenance.json for a start of the run in `path`: `models` is role -> ModelSettings (None: left out)."""
    from core import provenance

    return provenance.record(path, {role: provenance.model_settings(m) for role, m in models.items()
                                    if m is not None})


def failed_items(report: Path) -> list:
    """The items a finished report left out because they failed every try (none: a complete report)."""
    import json

    if not report.exists():
        return []
    try:
        return json.loads(report.read_text(encoding="utf-8")).get("failed") or []
    except (OSError, json.JSONDecodeError, AttributeError):
        return []
