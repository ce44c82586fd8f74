"""Warm start: SFT the teacher on another writer's (passage, completion) pairs before ReST-EM's first round.

Distillation from a stronger writer, trained exactly as an M-step (`teacher.m_step.run_m_step`: TRL, LoRA, loss on
the completion only). Inputs, any mix, in order (`warm_start.files`):

- a ``.jsonl`` file of ``{"prompt", "completion"}`` lines, such as the paper's SFT files
  (``synthetic_data/EM_SFT/**.jsonl``), whose prompt is a raw base-model prompt
  ``"...Passage:\\n{title}\\n{passage}\\n\\n{cue}"``: title and passage are parsed out of it;
- a ``.json`` file: a list of ``{"title", "context", "completions"}`` records (the paper's
  ``synthetic_data/train/**.json``), the first `completions_per_passage` completions of each (None: all).

A line or record that carries ``context`` (and ``title``) is taken as it is, whichever the file kind.
The file's own prompt is never trained on: the caller re-renders every prompt from its passage with the run's
template (pipeline/warm_start.py), so the teacher learns in the very format it samples in.

Run folder (``warm_start/``): pairs.jsonl (the rendered pairs), data.json (sha256 of each input file and of the
rendered pairs, their count), teacher/ (the LoRA), m_step.json (written by the caller; marks it done).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from core.errors import UserError
from core.hashing import read_sha256
from core.rundir import atomic_write_json, atomic_write_text

PASSAGE_MARK = "Passage:\n"


@dataclass(frozen=True)
class SourcePair:
    """One (passage, completion) pair read from a warm-start file; `where` names its file and line or index."""

    title: str
    passage: str
    completion: str
    where: str


def normalise(text: str) -> str:
    """Passages compare by their words: Unicode NFC, whitespace runs collapsed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def parse_raw_prompt(prompt: str, where: str) -> tuple[str, str]:
    """(title, passage) out of a raw prompt "...Passage:\\n{title}\\n{passage}\\n\\n{cue}" (the cue may be empty)."""
    start = prompt.find(PASSAGE_MARK)
    body = prompt[start + len(PASSAGE_MARK):] if start >= 0 else ""
    title, newline, rest = body.partition("\n")
    end = rest.rfind("\n\n")
    passage = rest[:end] if end >= 0 else ""
    if start < 0 or not newline or not passage.strip():
        raise UserError(f"{where}: cannot find the passage in the prompt (expected "
                        "'...Passage:\\n<title>\\n<passage>\\n\\n...', or give 'title' and 'context')")
    return title.strip(), passage


def read_pairs(files: list[str], *, completions_per_passage: int | None = 1) -> list[SourcePair]:
    """Every (passage, completion) pair of `files`, in order; a mistake is a one-line UserError naming file and line."""
    out: list[SourcePair] = []
    for name in files:
        path = Path(name).expanduser()
        before = len(out)
        for record, where in _records(path):
            out += _pairs(record, where, completions_per_passage)
        if len(out) == before:
            raise UserError(f"{path}: no (prompt, completion) pairs found")
    return out


def check_no_leak(pairs: list[SourcePair], evaluated: dict[str, str]) -> None:
    """Refuse the whole warm start if any pair's passage is evaluated (`evaluated`: normalised passage -> where)."""
    hits = [p for p in pairs if normalise(p.passage) in evaluated]
    if hits:
        first = hits[0]
        raise UserError(
            f"warm start refused: {len(hits)} of {len(pairs)} pairs are on passages the run evaluates, e.g. "
            f"{first.title!r} ({first.where}; {evaluated[normalise(first.passage)]}); take them out of the file"
        )


def pairs_sha256(pairs: list[dict]) -> str:
    """sha256 of the training pairs as JSON lines of {"prompt", "completion"}: what the teacher is trained on."""
    h = hashlib.sha256()
    for p in pairs:
        h.update((json.dumps({"prompt": p["prompt"], "completion": p["completion"]}, ensure_ascii=False) + "\n")
                 .encode())
    return h.hexdigest()


def data_record(files: list[str], pairs: list[dict]) -> dict:
    return {"files": [{"path": str(f), "sha256": read_sha256(Path(f).expanduser())} for f in files],
            "pairs": len(pairs), "pairs_sha256": pairs_sha256(pairs)}


def record_data(folder: Path, files: list[str], pairs: list[dict], *, trained: bool, force: bool) -> dict:
    """Write pairs.jsonl and data.json; once the warm start is `trained`, check the data against them instead: a
    changed file is refused unless `force` (which keeps the teacher already trained, and its record)."""
    new = data_record(files, pairs)
    path = folder / "data.json"
    if trained and path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        change = _change(old, new)
        if change and not force:
            raise UserError(f"{folder}: the warm start was trained on other data ({change}); use another --output, "
                            "or --force to go on with the teacher already trained")
        if change:
            from core.progress import say

            say(f"warm start: {change}; --force: the teacher already trained on the recorded data is kept")
        return old
    atomic_write_text(folder / "pairs.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    atomic_write_json(path, new)
    return new


def _change(old: dict, new: dict) -> str | None:
    was = {f["path"]: f["sha256"] for f in old.get("files", [])}
    for f in new["files"]:
        if f["path"] in was and was[f["path"]] != f["sha256"]:
            return f"{f['path']} changed: sha256 {was[f['path']][:12]} -> {f['sha256'][:12]}"
    if [f["sha256"] for f in old.get("files", [])] != [f["sha256"] for f in new["files"]]:
        return "other files"
    if old.get("pairs_sha256") != new["pairs_sha256"]:
        return f"the rendered pairs differ ({old.get('pairs')} -> {new['pairs']} pairs)"
    return None


# ---------------------------------------------------------------------------------------------- reading
def _records(path: Path) -> Iterator[tuple[Any, str]]:
    if not path.is_file():
        raise UserError(f"{path}: no such file (warm_start.files)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield _json(line, f"{path} line {lineno}"), f"{path} line {lineno}"
    elif suffix == ".json":
        data = _json(text, str(path))
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of {{title, context, completions}} records")
        for index, record in enumerate(data):
            yield record, f"{path} [{index}]"
    else:
        raise UserError(f"{path}: a warm-start file is .jsonl ({{prompt, completion}} lines) or .json "
                        "(a list of {title, context, completions})")


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: malformed JSON ({exc.msg}, column {exc.colno})") from None


def _pairs(record: Any, where: str, n: int | None) -> list[SourcePair]:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object with a prompt (or title and context) and a completion")
    if "context" in record:
        title, passage = record.get("title") or "", record["context"]
        if not isinstance(title, str) or not isinstance(passage, str) or not passage.strip():
            raise UserError(f"{where}: 'title' and 'context' must be strings, the context not blank")
    elif isinstance(record.get("prompt"), str):
        title, passage = parse_raw_prompt(record["prompt"], where)
    else:
        raise UserError(f"{where}: no 'prompt' string (nor 'context') to find the passage in")
    if isinstance(record.get("completions"), list):
        completions = record["completions"] if n is None else record["completions"][:n]
    elif "completion" in record:
        completions = [record["completion"]]
    else:
        raise UserError(f"{where}: no 'completion' string (nor a 'completions' list)")
    for c in completions:
        if not isinstance(c, str) or not c.strip():
            raise UserError(f"{where}: a completion is blank or not a string")
    return [SourcePair(title, passage, c, where) for c in completions]
