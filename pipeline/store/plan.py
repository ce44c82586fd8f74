"""What an update absorbs: the folder diffed against the store by content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from core.errors import UserError
from core.progress import say
from pipeline.documents import Document, load_documents, load_questions
from pipeline.store.config import StoreConfig
from pipeline.store.state import StoreState


def content_hash(doc: Document) -> str:
    return hashlib.sha256(json.dumps([doc.title, doc.text], ensure_ascii=False).encode()).hexdigest()


def version_key(doc: Document, digest: str) -> str:
    return f"{doc.id}@{digest[:12]}"


@dataclass
class Absorbed:
    """A document version the update absorbs."""

    doc: Document
    digest: str
    key: str


@dataclass
class UpdatePlan:
    """Document ids by what the folder holds against the store, and the versions to absorb, in folder order."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # rejected by the gate before, unchanged since
    missing: list[str] = field(default_factory=list)  # in the store, no longer in the folder (kept)
    absorb: list[Absorbed] = field(default_factory=list)

    @property
    def docs(self) -> list[Document]:
        return [a.doc for a in self.absorb]

    @property
    def keys(self) -> list[str]:
        return [a.key for a in self.absorb]


def plan_update(config: StoreConfig, state: StoreState) -> UpdatePlan:
    """What this update would absorb."""
    if not config.docs:
        raise UserError("no documents given (--docs FOLDER: the folder the store keeps up to date)")
    docs = load_documents(config.docs)
    if config.questions:
        docs = load_questions(config.questions, docs)
    out = UpdatePlan()
    for doc in docs:
        digest = content_hash(doc)
        key = version_key(doc, digest)
        known = state.current(doc.id)
        if known is not None and known.hash == digest:
            out.unchanged.append(doc.id)
            continue
        if key in state.rejected:
            out.rejected.append(doc.id)
            continue
        (out.changed if known is not None else out.new).append(doc.id)
        out.absorb.append(Absorbed(doc, digest, key))
    seen = {d.id for d in docs}
    out.missing = [i for i in state.documents if i not in seen]
    return out


def say_plan(plan: UpdatePlan) -> None:
    parts = [f"{len(getattr(plan, k))} {k}" for k in ("new", "changed", "unchanged") if getattr(plan, k)]
    say("store: documents " + (", ".join(parts) or "none"))
    if plan.rejected:
        say(f"store: {len(plan.rejected)} documents the gate rejected before are skipped until they change: "
            + ", ".join(plan.rejected[:5]))
    if plan.missing:
        say(f"store: {len(plan.missing)} stored documents are no longer in the folder; the store keeps them")
