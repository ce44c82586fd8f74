"""The store's records as types, read from and written to JSON here and nowhere else.

`StoreState` is `state.json`, `Manifest` is `store.json`, `UpdateEntry` is an update's `update.json` (and its entry
in the state), `StoredDocument` is `documents/<hash>.json`, `PendingJob` is the update in progress
(`.pending/job.json`). The JSON is what earlier versions wrote and read: a key that an older store lacks stays
absent when its record is written back (unless this version sets it), a key this version does not know is kept, and
keys keep their order, so a store opened and saved again is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar


def _default(f):
    from dataclasses import MISSING

    return f.default_factory() if f.default_factory is not MISSING else f.default


@dataclass
class Record:
    """A JSON object as a dataclass: each known key a field, the others kept aside; `OPTIONAL` fields are written
    only when set (not None), and a field that was absent when read stays absent while it keeps its default."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()
    NESTED: ClassVar[dict[str, tuple[str, type]]] = {}  # field -> ("list" | "dict" | "one", Record type)

    _extra: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _absent: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)
    _order: tuple = field(default=(), init=False, repr=False, compare=False)

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.init]

    @classmethod
    def from_json(cls, data: dict):
        names = cls._names()
        kwargs = {}
        for name in names:
            if name in data:
                value = data[name]
                kind, sub = cls.NESTED.get(name, (None, None))
                if kind == "list":
                    value = [sub.from_json(v) for v in value]
                elif kind == "dict":
                    value = {k: sub.from_json(v) for k, v in value.items()}
                kwargs[name] = value
        obj = cls(**kwargs)
        obj._extra = {k: v for k, v in data.items() if k not in names}
        obj._absent = frozenset(n for n in names if n not in data)
        obj._order = tuple(data)
        return obj

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if (f.name in self.OPTIONAL and value is None) or (f.name in self._absent and value == _default(f)):
                continue
            kind = self.NESTED.get(f.name, (None,))[0]
            if kind == "list":
                value = [v.to_json() for v in value]
            elif kind == "dict":
                value = {k: v.to_json() for k, v in value.items()}
            out[f.name] = value
        out.update(self._extra)
        order = [k for k in self._order if k in out] + [k for k in out if k not in self._order]
        return {k: out[k] for k in order}

    def has(self, name: str) -> bool:
        """Whether the JSON this record was read from held `name` (a record made here holds every field)."""
        return name not in self._absent

    def copy(self):
        import copy

        return copy.deepcopy(self)


# ------------------------------------------------------------------------------------------------ state.json
@dataclass
class Version(Record):
    """One absorbed version of a document (its key is `id@hash[:12]`)."""

    key: str = ""
    hash: str = ""
    update: int | None = None
    order: int = 0
    added: str = ""
    probes: int = 0
    probe_source: str | None = None  # "user", "teacher" or None (absorbed unmeasured)
    superseded_by: str | None = None

    OPTIONAL: ClassVar = ("superseded_by",)

    @property
    def id(self) -> str:
        return self.key.rsplit("@", 1)[0]


@dataclass
class DocumentHistory(Record):
    versions: list[Version] = field(default_factory=list)

    NESTED: ClassVar = {"versions": ("list", Version)}


@dataclass
class UpdateEntry(Record):
    """One committed update's report: `update.json`, and its entry in the state."""

    number: int = 0
    finished: str = ""
    accepted: bool = False
    decision: str = ""  # accepted, scaled or rejected
    scale: float = 1.0
    documents: list[str] = field(default_factory=list)  # the document versions (keys) it absorbed
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    sequences: int = 0
    replayed: int = 0
    sequences_split: int = 0
    steps: int | None = None
    final_loss: float | None = None
    drift_bits_per_token: float | None = None
    retention_before: float | None = None
    retention_after: float | None = None
    drop: float | None = None
    gate_tries: list[dict] = field(default_factory=list)
    probed_earlier: int = 0
    earlier: int = 0
    unmeasured: list[str] = field(default_factory=list)
    teacher_probes: list[str] = field(default_factory=list)
    # document key -> what wrote its self-edits: {"teacher": path, "sha256": ...} or {"edits": file, "sha256": ...}
    self_edits_by: dict[str, dict] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    adapter_mb: float | None = None
    broken: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    retired: bool | None = None  # a library adapter that holds no current document

    OPTIONAL: ClassVar = ("self_edits_by", "adapter_mb", "retired")


@dataclass
class MatrixRow(Record):
    """The probe scores after one accepted update (document key -> mean; `items`: per probe)."""

    update: int = 0
    scores: dict[str, float] = field(default_factory=dict)
    items: dict[str, list[float]] = field(default_factory=dict)
    before_new: dict[str, float] = field(default_factory=dict)
    oracle: dict[str, float] = field(default_factory=dict)


@dataclass
class Rejection(Record):
    update: int = 0
    id: str = ""
    drop: float | None = None


@dataclass
class StoreState(Record):
    documents: dict[str, DocumentHistory] = field(default_factory=dict)
    updates: list[UpdateEntry] = field(default_factory=list)
    matrix: list[MatrixRow] = field(default_factory=list)
    base: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, Rejection] = field(default_factory=dict)

    NESTED: ClassVar = {"documents": ("dict", DocumentHistory), "updates": ("list", UpdateEntry),
                        "matrix": ("list", MatrixRow), "rejected": ("dict", Rejection)}
    REQUIRED: ClassVar = ("documents", "updates", "matrix", "base", "rejected")

    def accepted(self) -> list[UpdateEntry]:
        return [u for u in self.updates if u.accepted]

    def next_number(self) -> int:
        return self.updates[-1].number + 1 if self.updates else 1

    def active(self) -> dict[str, Version]:
        """Document key -> its version, for the current version of every absorbed document (absorption order)."""
        out = {}
        for history in self.documents.values():
            current = history.versions[-1]
            if current.update is not None:
                out[current.key] = current
        return dict(sorted(out.items(), key=lambda kv: (kv[1].update, kv[1].order)))

    def current(self, doc_id: str) -> Version | None:
        history = self.documents.get(doc_id)
        return history.versions[-1] if history and history.versions else None

    def holding(self, number: int) -> list[str]:
        """The ids of the current documents that update `number` absorbed."""
        return [v.id for v in self.active().values() if v.update == number]


def describe_writer(writer: dict | None) -> str:
    """`teacher PATH (sha256 0123456789ab)` or `edits FILE (sha256 ...)`, for status and messages."""
    if not writer:
        return "-"
    kind = "teacher" if "teacher" in writer else "edits"
    digest = next((f"{k} {str(v)[:12]}" for k, v in writer.items() if k not in (kind, "settings") and v), None)
    return f"{kind} {writer[kind]}" + (f" ({digest})" if digest else "")


# ------------------------------------------------------------------------------------------------ the others
@dataclass
class Manifest(Record):
    """`store.json`: what the store is, and the settings fixed when it was created (dotted name -> value)."""

    format: str = ""
    version: int = 0
    created: str = ""
    settings: dict = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return self.settings["strategy"]

    def __getitem__(self, key: str):  # read as the JSON object it is, as callers before these types did
        return self.to_json()[key]

    @property
    def student(self) -> dict:
        return self.settings["student.model"]


@dataclass
class StoredDocument(Record):
    """`documents/<hash>.json`: one absorbed document version, its self-edits, training texts and probes."""

    key: str = ""
    id: str = ""
    title: str = ""
    text: str = ""
    hash: str = ""
    self_edits: list[str] = field(default_factory=list)
    training_texts: list[str] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)  # {"question", "answers"}
    probe_source: str | None = None
    # The passages the training texts were written for (what student.train.objective=context_distill puts in the
    # prompt of the student it distils from), each once, since a document's texts mostly share one; `context_of[i]`
    # indexes training_texts[i]'s. A record of an earlier version has neither.
    contexts: list[str] | None = None
    context_of: list[int] | None = None

    OPTIONAL: ClassVar = ("contexts", "context_of")

    def with_contexts(self, contexts: list[str]) -> StoredDocument:
        """This record, with `contexts[i]` recorded as the passage training_texts[i] was written for."""
        index: dict[str, int] = {}
        self.context_of = [index.setdefault(c, len(index)) for c in contexts]
        self.contexts = list(index)
        return self

    def training_contexts(self) -> list[str] | None:
        """The passage of each training text, as recorded (None when the record holds none for these texts)."""
        if self.contexts is None or self.context_of is None or len(self.context_of) != len(self.training_texts):
            return None
        return [self.contexts[i] for i in self.context_of]


@dataclass
class PendingJob(Record):
    """`.pending/job.json`: the update in progress, so that a rerun after a crash continues it per document.

    `self_edits_by` names, per document version, what wrote (or is writing) its self-edits; `probes_by`, per
    document whose probes the teacher writes, that teacher. A pending update written before these were recorded has
    neither, and its self-edits are written again."""

    number: int = 0
    documents: list[str] = field(default_factory=list)
    self_edits_by: dict[str, dict] | None = None
    probes_by: dict[str, dict] | None = None

    OPTIONAL: ClassVar = ("self_edits_by", "probes_by")
