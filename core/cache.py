"""Where seal-tt keeps what it can rebuild (GGUF conversions, fetched models, content hashes, the demo's world):
`$SEAL_TT_CACHE`, by default `~/.cache/seal-tt`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder, read from the environment on every call (tests and users move it with SEAL_TT_CACHE)."""
    return Path(os.environ.get("SEAL_TT_CACHE", Path.home() / ".cache" / "seal-tt"))
