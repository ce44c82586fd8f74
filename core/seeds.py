"""Seeds derived from names, so that the same context gets the same draws however a run is split or resumed."""

from __future__ import annotations

import zlib


def context_seed(seed: int, *parts) -> int:
    """A stable per-context seed: the same document gets the same samples however the run is split or resumed."""
    return zlib.crc32(":".join(map(str, (seed, *parts))).encode()) & 0x7FFFFFFF
