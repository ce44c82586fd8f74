"""A benchmark run's records kept compact in the repo, so its tables can be regraded and its run resumed on a machine
that never ran it.

`save` writes each `records*.jsonl` of a run folder, gzipped, and its `bench.json` into a raw folder as
`<name>_records*.jsonl.gz` and `<name>_bench.json`; `restore` writes them back into a run folder. Records are only
ever appended, so a saved file must be a prefix of the run's (save) and a run's file a prefix of, or equal to, the
saved one (restore); anything else is refused, so that neither overwrites lines it did not write. A worker may be
appending as this reads: only whole lines count.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.rundir import atomic_write_bytes as _write_bytes  # noqa: E402


def _lines(data: bytes) -> list[bytes]:
    """The complete lines of a records file (a torn last line, being written, is left out)."""
    lines = data.split(b"\n")
    return [x + b"\n" for x in lines[:-1] if x.strip()]


def _is_prefix(a: list[bytes], b: list[bytes]) -> bool:
    return b[:len(a)] == a


def _saved_lines(path: Path) -> list[bytes]:
    """The lines of a file this module saved before; anything else there is refused, never replaced."""
    try:
        return _lines(gzip.decompress(path.read_bytes()))
    except (OSError, EOFError, ValueError):
        raise SystemExit(f"{path} is not a gzipped records file; not overwritten") from None


def save(run: Path, raw: Path, name: str) -> dict[str, int]:
    """Gzip the run's records into `raw`; returns file name -> lines saved."""
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for f in sorted(run.glob("records*.jsonl")):
        lines = _lines(f.read_bytes())
        dest = raw / f"{name}_{f.name}.gz"
        if dest.exists():
            old = _saved_lines(dest)
            if not _is_prefix(old, lines):
                raise SystemExit(f"{dest} holds records that {f} does not; not overwritten")
        _write_bytes(dest, gzip.compress(b"".join(lines), mtime=0))
        out[dest.name] = len(lines)
    bench, saved = run / "bench.json", raw / f"{name}_bench.json"
    if bench.exists():
        if saved.exists() and json.loads(saved.read_text()) != json.loads(bench.read_text()):
            raise SystemExit(f"{saved} was saved from a run with other settings than {bench}; not overwritten "
                             "(save under another --as)")
        _write_bytes(saved, bench.read_bytes())
    return out


# A train-teacher run folder's compact record: everything but its weights (teacher LoRAs, merged models).
RUN_FILES = ("*.jsonl", "*.json", "*.md", "*.yaml")
MARKER = "saved_from.json"  # in a save_run folder: the run it holds


def save_run(run: Path, dest: Path) -> dict[str, int]:
    """Copy a seal-tt run folder's records and summaries (RUN_FILES, at any depth; no weights) under `dest`, each
    JSONL gzipped; returns relative path -> lines (JSONL) or bytes. A saved JSONL must be a prefix of the run's, as
    in `save`; the other files are the run's current summaries and replace their saved copies, in a `dest` that this
    function saved the same run into before (its MARKER names the run) and nowhere else."""
    marker, me = dest / MARKER, {"run": str(run.resolve())}
    if dest.exists() and any(dest.iterdir()):
        try:
            mine = json.loads(marker.read_text()) == me
        except (OSError, ValueError):
            mine = False
        if not mine:
            raise SystemExit(f"{dest} holds files not saved from {run}; nothing overwritten (use another folder)")
    _write_bytes(marker, (json.dumps(me) + "\n").encode())
    out = {}
    weights = {f.parent for f in run.rglob("*.safetensors")}  # a model or adapter folder: its configs go with it
    files = sorted({f for pattern in RUN_FILES for f in run.rglob(pattern) if f.is_file()})
    for f in files:
        rel = f.relative_to(run)
        if any(part.startswith(".") for part in rel.parts) or weights & set(f.parents):
            continue  # a file being written (atomic writes go through a hidden temporary), or a model's own
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix == ".jsonl":
            lines = _lines(f.read_bytes())
            target = target.with_name(target.name + ".gz")
            if target.exists() and not _is_prefix(_saved_lines(target), lines):
                raise SystemExit(f"{target} holds records that {f} does not; not overwritten")
            _write_bytes(target, gzip.compress(b"".join(lines), mtime=0))
            out[str(rel)] = len(lines)
        else:
            data = f.read_bytes()
            _write_bytes(target, data)
            out[str(rel)] = len(data)
    return out


def restore(run: Path, raw: Path, name: str) -> dict[str, int]:
    """Write the saved records back into `run` where it lacks them; returns file name -> lines restored."""
    saved = sorted(raw.glob(f"{name}_records*.jsonl.gz"))
    if not saved:
        raise SystemExit(f"{raw}: no {name}_records*.jsonl.gz")
    run.mkdir(parents=True, exist_ok=True)
    bench = raw / f"{name}_bench.json"
    if bench.exists():
        here = run / "bench.json"
        if here.exists() and json.loads(here.read_text()) != json.loads(bench.read_text()):
            raise SystemExit(f"{here} differs from {bench}: the run was made with other settings; use another --run")
        if not here.exists():
            _write_bytes(here, bench.read_bytes())
    out = {}
    for f in saved:
        lines = _lines(gzip.decompress(f.read_bytes()))
        dest = run / f.name[len(name) + 1:-len(".gz")]
        if dest.exists():
            local = _lines(dest.read_bytes())
            if _is_prefix(lines, local):
                continue  # the run already holds every saved line
            if not _is_prefix(local, lines):
                raise SystemExit(f"{dest} disagrees with {f}; not overwritten")
        _write_bytes(dest, b"".join(lines))
        out[dest.name] = len(lines)
    return out
