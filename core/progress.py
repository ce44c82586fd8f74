"""Progress bars and status lines, on stderr so that stdout stays clean for results."""

from __future__ import annotations

import sys


def progress_bar(items, *, desc: str, enabled: bool = True, total: int | None = None):
    """A bar with items/s and the time left (`total` for a generator, which has no length)."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, total=total)


_quiet = False


def set_quiet(value: bool) -> None:
    global _quiet
    _quiet = value


def say(message: str) -> None:
    if not _quiet:
        print(message, file=sys.stderr, flush=True)
