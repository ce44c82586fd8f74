"""Documents and their questions: the contexts of the knowledge-incorporation task.

Accepted inputs (any mix, in order):

- a ``.txt`` / ``.md`` file: one document, id and title = the file stem;
- a folder: every ``.txt`` / ``.md`` below it, recursively, in sorted order (hidden files and folders are
  skipped); the id is the path relative to the folder without its suffix, so ``a.txt`` and ``sub/a.txt`` do
  not collide;
- a ``.json`` file: a list of document objects -- which covers the SEAL paper's grouped SQuAD file and its
  synthetic-data files (extra keys such as ``completions`` are ignored) -- or the official SQuAD layout
  ``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}``;
- a ``.jsonl`` file: one document object per line.

A document object has its text under ``text``, ``context``, ``passage`` or ``document``, and optionally
``title`` (default ``""``: an invented title would leak into the teacher's prompt), ``id`` (default
``<file stem>-<index>``) and ``questions`` (``{"question", "answer"}`` or ``{"question", "answers": [...]}``).

Every mistake in the input raises :class:`~core.errors.UserError` with one line that names the file and,
where it helps, the JSON list index or JSONL line.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from core.errors import UserError

TEXT_SUFFIXES = (".txt", ".md")
TEXT_KEYS = ("text", "context", "passage", "document")


@dataclass(frozen=True)
class Question:
    question: str
    answers: tuple[str, ...]


@dataclass
class Document:
    id: str
    title: str
    text: str
    questions: list[Question] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- public API


def load_documents(paths: list[str | Path] | str | Path, limit: int | None = None) -> list[Document]:
    """Load documents from files and folders; ids must be unique across all of them."""
    if isinstance(paths, (str, Path)):
        paths = [paths]  # a lone path would otherwise be iterated character by character
    if not paths:
        raise UserError("no document paths given")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise UserError(f"document limit must be a non-negative integer, got {limit!r}")
    documents: list[Document] = []
    sources: dict[str, str] = {}
    for path in paths:
        for doc, where in _load_path(Path(path).expanduser()):
            if doc.id in sources:
                raise UserError(f"{where}: duplicate document id {doc.id!r} (first seen in {sources[doc.id]})")
            sources[doc.id] = where
            documents.append(doc)
    # Everything is validated before truncating, so a broken file fails the same way with or without a limit.
    return documents if limit is None else documents[:limit]


def load_questions(path: str | Path, documents: list[Document]) -> list[Document]:
    """Attach the questions in a JSON/JSONL file to `documents`; returns new documents, inputs unchanged.

    Each record is ``{"document": <id or title>, "question": ..., "answer" | "answers": ...}``. A reference
    is matched against ids first, then titles; a title shared by several documents is an error.
    """
    path = Path(path)
    records = list(_records(path))
    if not records:
        raise UserError(f"{path}: no questions found")
    resolve = _reference_resolver(documents)
    added: dict[str, list[Question]] = {}
    for record, where in records:
        _require_object(record, where, "a question object")
        doc_id = resolve(_document_reference(record, where), where)
        added.setdefault(doc_id, []).append(_question(record, where))
    return [
        dataclasses.replace(doc, questions=[*doc.questions, *added.get(doc.id, [])]) for doc in documents
    ]


# ------------------------------------------------------------------------------------------ path dispatch


def _load_path(path: Path) -> Iterator[tuple[Document, str]]:
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        yield from _load_folder(path)
        return
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        yield _text_file_document(path, path.stem), str(path)
    elif suffix in (".json", ".jsonl"):
        yield from _load_records_file(path)
    else:
        raise UserError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; expected .txt, .md, .json, .jsonl "
            "or a folder"
        )


def _load_folder(folder: Path) -> Iterator[tuple[Document, str]]:
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in TEXT_SUFFIXES and p.is_file() and not _is_hidden(p.relative_to(folder))
    )
    if not files:
        raise UserError(f"{folder}: folder holds no .txt or .md documents")
    for file in files:
        doc_id = file.relative_to(folder).with_suffix("").as_posix()
        yield _text_file_document(file, doc_id), str(file)


def _is_hidden(relative: Path) -> bool:
    # Editor and tool droppings (.ipynb_checkpoints, .git, ...) are not the user's documents.
    return any(part.startswith(".") for part in relative.parts)


def _text_file_document(path: Path, doc_id: str) -> Document:
    text = _read_text(path).strip()
    if not text:
        raise UserError(f"{path}: document is empty")
    return Document(id=doc_id, title=path.stem, text=text)


def _load_records_file(path: Path) -> Iterator[tuple[Document, str]]:
    count = 0
    for index, (record, where) in enumerate(_records(path, unwrap_squad=True)):
        yield _document(record, where, default_id=f"{path.stem}-{index}"), where
        count += 1
    if count == 0:
        raise UserError(f"{path}: no documents found")


# ------------------------------------------------------------------------------------------ file reading


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    try:
        # utf-8-sig: a byte-order mark from a Windows editor is not part of the document.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        raise UserError(f"{path}: not UTF-8 text (invalid byte 0x{bad} at byte offset {exc.start})") from None


def _records(path: Path, unwrap_squad: bool = False) -> Iterator[tuple[Any, str]]:
    """Yield (record, location) from a JSON list or a JSONL file."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: expected a .json or .jsonl file, got a folder")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_records(path)
    elif suffix == ".json":
        yield from _json_records(path, unwrap_squad)
    else:
        raise UserError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; expected .json or .jsonl")


def _json_records(path: Path, unwrap_squad: bool) -> Iterator[tuple[Any, str]]:
    data = _parse_json(_read_text(path), str(path))
    if unwrap_squad and _is_official_squad(data):
        yield from _official_squad_records(data, path)
        return
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of objects, got {_type_name(data)}")
    for index, record in enumerate(data):
        yield record, f"{path} [{index}]"


def _jsonl_records(path: Path) -> Iterator[tuple[Any, str]]:
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            where = f"{path} line {lineno}"
            yield _parse_json(line, where, one_line=True), where


def _parse_json(text: str, where: str, one_line: bool = False) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # A JSONL record is one line whose number is already in `where`; only the column adds anything.
        at = f"column {exc.colno}" if one_line else f"line {exc.lineno}, column {exc.colno}"
        raise UserError(f"{where}: malformed JSON at {at}: {exc.msg}") from None


def _is_official_squad(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("data"), list)


def _official_squad_records(data: dict, path: Path) -> Iterator[tuple[dict, str]]:
    """Flatten ``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}`` into document objects."""
    for a, article in enumerate(data["data"]):
        where = f"{path} data[{a}]"
        _require_object(article, where, "an article object")
        paragraphs = article.get("paragraphs")
        if not isinstance(paragraphs, list):
            raise UserError(f"{where}: 'paragraphs' must be a list, got {_type_name(paragraphs)}")
        for p, paragraph in enumerate(paragraphs):
            here = f"{where}.paragraphs[{p}]"
            _require_object(paragraph, here, "a paragraph object")
            record = {k: v for k, v in paragraph.items() if k != "qas"}
            record.setdefault("title", article.get("title", ""))
            if "qas" in paragraph:
                record["questions"] = paragraph["qas"]
            yield record, here


# --------------------------------------------------------------------------------------- record parsing


def _document(record: Any, where: str, default_id: str) -> Document:
    _require_object(record, where, "a document object")
    return Document(
        id=_document_id(record, where, default_id),
        title=_optional_str(record, "title", where, default=""),
        text=_document_text(record, where),
        questions=_questions(record, where),
    )


def _document_text(record: dict, where: str) -> str:
    key = next((k for k in TEXT_KEYS if k in record), None)
    if key is None:
        raise UserError(f"{where}: document has no text (expected one of the keys {', '.join(TEXT_KEYS)})")
    text = record[key]
    if not isinstance(text, str):
        raise UserError(f"{where}: '{key}' must be a string, got {_type_name(text)}")
    if not text.strip():
        raise UserError(f"{where}: document is empty ('{key}' is blank)")
    return text


def _document_id(record: dict, where: str, default: str) -> str:
    if "id" not in record or record["id"] is None:
        return default
    value = record["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UserError(f"{where}: 'id' must be a string or an integer, got {_type_name(value)}")
    value = str(value)
    if not value.strip():
        raise UserError(f"{where}: 'id' is blank")
    return value


def _questions(record: dict, where: str) -> list[Question]:
    items = record.get("questions")
    if items is None:
        return []
    if not isinstance(items, list):
        raise UserError(f"{where}: 'questions' must be a list, got {_type_name(items)}")
    out = []
    for i, item in enumerate(items):
        here = f"{where} questions[{i}]"
        _require_object(item, here, "a question object")
        out.append(_question(item, here))
    return out


def _question(record: dict, where: str) -> Question:
    text = record.get("question")
    if not isinstance(text, str):
        found = "missing" if text is None else f"a {_type_name(text)}"
        raise UserError(f"{where}: 'question' must be a string, got {found}")
    if not text.strip():
        raise UserError(f"{where}: question is blank")
    return Question(question=text, answers=_answers(record, where))


def _answers(record: dict, where: str) -> tuple[str, ...]:
    golds: list[str] = []
    if "answer" in record and record["answer"] is not None:
        golds.append(_answer_text(record["answer"], where, "'answer'"))
    if "answers" in record and record["answers"] is not None:
        many = record["answers"]
        if not isinstance(many, list):
            raise UserError(f"{where}: 'answers' must be a list, got {_type_name(many)}")
        golds.extend(_answer_text(a, where, f"answers[{i}]") for i, a in enumerate(many))
    golds = [g for g in golds if g.strip()]
    if not golds:
        raise UserError(f"{where}: question has no answer (give 'answer' or a non-empty 'answers' list)")
    return tuple(dict.fromkeys(golds))  # SQuAD repeats golds given by several annotators


def _answer_text(value: Any, where: str, label: str) -> str:
    # Official SQuAD answers are {"text", "answer_start"} objects.
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{where}: {label} must be a string, got {_type_name(value)}")
    return value if isinstance(value, str) else str(value)  # numeric golds ("1984") are common in QA data


def _optional_str(record: dict, key: str, where: str, default: str) -> str:
    value = record.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise UserError(f"{where}: '{key}' must be a string, got {_type_name(value)}")
    return value


def _require_object(value: Any, where: str, what: str) -> None:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected {what}, got {_type_name(value)}")


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------- question references


def _document_reference(record: dict, where: str) -> str:
    ref = record.get("document")
    if ref is None:
        raise UserError(f"{where}: question has no 'document' (the id or title of its document)")
    if isinstance(ref, bool) or not isinstance(ref, (str, int)):
        raise UserError(f"{where}: 'document' must be a string or an integer, got {_type_name(ref)}")
    return str(ref)


def _reference_resolver(documents: list[Document]):
    by_id = {doc.id: doc.id for doc in documents}
    by_title: dict[str, list[str]] = {}
    for doc in documents:
        by_title.setdefault(_fold(doc.title), []).append(doc.id)

    def resolve(ref: str, where: str) -> str:
        if ref in by_id:
            return ref
        ids = by_title.get(_fold(ref), []) if ref.strip() else []
        if len(ids) == 1:
            return ids[0]
        if len(ids) > 1:
            raise UserError(
                f"{where}: document title {ref!r} is shared by {len(ids)} documents; refer to it by id "
                f"(one of {_preview(ids)})"
            )
        raise UserError(f"{where}: unknown document {ref!r} (no document has this id or title)")

    return resolve


def _fold(title: str) -> str:
    # Titles typed by hand differ from the file's in case and Unicode form more often than in content.
    return unicodedata.normalize("NFC", title).strip().casefold()


def _preview(items: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (", ..." if len(items) > n else "")
