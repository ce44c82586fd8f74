"""Pre-written self-edits: absorb what another model (or an earlier run) wrote, with no teacher loaded.

Accepted files:

- JSONL, one self-edit a line: ``{"document": <id or title of a document of --docs>, "completion": "..."}``
  (``self_edit`` is read as ``completion``, so a run folder's ``self_edits.jsonl`` can be given back as it is);
  several lines may name one document, in order.
- The SEAL paper's JSON (``synthetic_data/eval/*.json``): a list of ``{"title", "context", "questions",
  "completions": [...]}``. The documents and their questions come from the file itself, so no --docs is needed.

Per document, ``edits.count`` completions starting at index ``edits.start`` are used (the first one by default, as
the paper's evaluation does). What was chosen is reported; a document with fewer completions than asked is an error,
not a silent shortfall.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import UserError
from pipeline.documents import Document, load_documents


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None


def _read_json_lines(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {i} is not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {i} is not a JSON object")
        rows.append((i, row))
    return rows


def _pick(completions: list[str], start: int, count: int | None, where: str) -> list[str]:
    if start < 0 or (count is not None and count < 1):
        raise UserError(f"edits.start must be >= 0 and edits.count >= 1 (or null for all), got {start} and {count}")
    chosen = completions[start:] if count is None else completions[start:start + count]
    if not chosen or (count is not None and len(chosen) < count):
        raise UserError(f"{where} has {len(completions)} self-edit(s); edits.start={start}, edits.count={count} "
                        "ask for more")
    return chosen


def is_paper_json(path: str | Path) -> bool:
    p = Path(path)
    if p.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "completions" in data[0]


def load_paper_edits(path: str | Path, *, start: int = 0, count: int | None = 1,
                     limit: int | None = None) -> tuple[list[Document], dict[str, list[str]]]:
    """Documents (with questions) and their chosen completions from one of the paper's JSON files."""
    path = Path(path)
    docs = load_documents([path], limit=limit)
    data = json.loads(path.read_text(encoding="utf-8"))
    edits = {}
    for i, doc in enumerate(docs):
        completions = data[i].get("completions")
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            raise UserError(f"{path}: item {i} has no list of string completions")
        edits[doc.id] = _pick(completions, start, count, f"{path}: item {i} ({doc.title!r})")
    return docs, edits


def load_jsonl_edits(path: str | Path, docs: list[Document], *, start: int = 0,
                     count: int | None = 1, others: tuple[Document, ...] | list[Document] = (),
                     skip_unknown: bool = False) -> dict[str, list[str]]:
    """Chosen completions per document of `docs`, from `{"document", "completion"}` lines.

    Lines naming one of `others` (documents the caller knows but does not want now: a store's already absorbed
    ones) are skipped; a line naming a document in neither is an error, unless `skip_unknown` (a store's edits
    file may hold self-edits for documents that have not reached its folder yet)."""
    path = Path(path)
    skip_ids = {d.id for d in others} - {d.id for d in docs}
    skip_titles = {d.title for d in others if d.title} - {d.title for d in docs if d.title}
    by_id = {d.id: d for d in docs}
    by_title: dict[str, list[Document]] = {}
    for d in docs:
        if d.title:
            by_title.setdefault(d.title, []).append(d)
    found: dict[str, list[str]] = {}
    for line, row in _read_json_lines(path):
        name = row.get("document")
        text = row.get("completion", row.get("self_edit"))
        if not isinstance(name, str) or not isinstance(text, str):
            raise UserError(f"{path}: line {line} needs \"document\" (an id or title) and \"completion\" (text)")
        if name in skip_ids or (name not in by_id and name in skip_titles):
            continue
        if name in by_id:
            doc = by_id[name]
        elif len(by_title.get(name, [])) == 1:
            doc = by_title[name][0]
        elif name in by_title:
            raise UserError(f"{path}: line {line}: title {name!r} names {len(by_title[name])} documents; use an id")
        elif skip_unknown:
            continue
        else:
            raise UserError(f"{path}: line {line}: no document {name!r} among --docs (ids or titles)")
        found.setdefault(doc.id, []).append(text)
    missing = [d.id for d in docs if d.id not in found]
    if missing:
        raise UserError(f"{path} has no self-edit for document {missing[0]!r}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return {d.id: _pick(found[d.id], start, count, f"{path}: document {d.id!r}") for d in docs}


def load_edits(path: str | Path, docs: list[Document] | None, *, start: int = 0, count: int | None = 1,
               limit: int | None = None) -> tuple[list[Document], dict[str, list[str]]]:
    """(documents, completions per document id) for `adapt-student --edits FILE`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"self-edits file not found: {path}")
    _read_text(p)  # a file in another encoding is named as such, not as a wrong format
    if is_paper_json(p):
        if docs:
            raise UserError(f"{p} holds its own passages and questions (the paper's format); leave out --docs")
        return load_paper_edits(p, start=start, count=count, limit=limit)
    if p.suffix.lower() != ".jsonl":
        raise UserError(f"{p}: expected a .jsonl of {{\"document\", \"completion\"}} lines or the paper's JSON with "
                        "\"completions\"")
    if not docs:
        raise UserError(f"{p} names documents by id or title: give them with --docs")
    return docs, load_jsonl_edits(p, docs, start=start, count=count)
