"""One writer per folder: an exclusive lock on `<folder>/.lock`, released by the kernel when its holder dies.

The lock file says who holds it (pid and start time), so the process refused can name the one running. A stale
file left by a killed process holds no lock: flock belongs to the open file, not to the file on disk.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from core.errors import UserError

LOCK_NAME = ".lock"
POLL_SECONDS = 0.5


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
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            f.seek(0)
            holder = f.read().strip() or "another process"
            if not wait:
                raise error(busy.format(path=path, holder=holder)) from None
            if not told:
                print(f"waiting: {busy.format(path=path, holder=holder)}", file=sys.stderr, flush=True)
                told = True
            # Polled, not a blocking flock: Ctrl-C may land on another thread (torch's, a tokenizer's), which would
            # leave a blocking call in the main thread waiting for the holder; a sleep wakes to see it.
            time.sleep(POLL_SECONDS)
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
