"""One writer per folder: an exclusive lock on `<folder>/.lock`, released by the kernel when its holder dies.

The lock file says who holds it (pid and start time), so the process refused can name the one running. A stale
file left by a killed process holds no lock: flock belongs to the open file, not to the file on disk.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from core.errors import UserError

LOCK_NAME = ".lock"


class FolderBusy(UserError):
    """Another process holds the folder's lock."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextmanager
def folder_lock(path: str | Path, *, wait: bool = False, busy: str = "{path} is in use by {holder}",
                error=FolderBusy):
    """Hold `path`'s lock for the block. Busy: raise `error(busy.format(path=, holder=))`, or with `wait` block
    until the holder is done."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK_NAME, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise error(busy.format(path=path, holder=holder)) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {_now()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
