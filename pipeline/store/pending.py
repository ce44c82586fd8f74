"""The update in progress, `.pending/`: what it absorbs, what writes each document's self-edits and probes, and
those self-edits and probes as they are written (one teacher load for both).

A rerun after a crash continues the pending update per document, never from scratch: a document added to the
folder since is added to it; the self-edits (and teacher-written probes) of a document whose text is unchanged and
whose writer is the same are kept; those of a changed document, or written by another teacher, another edits file
or other settings, are written again. The writer is recorded per document in `job.json` before anything is
written, and in the committed update's `update.json` (`self_edits_by`): a teacher by its content hash (the one
`core.provenance` records, cached per file, so a large model is not read again on every update), an edits file by
its hash. A pending update from before writers were recorded has its self-edits written again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import ExitStack
from pathlib import Path

from core.config import ModelSettings, to_dict
from core.errors import UserError
from core.progress import say
from core.rundir import append_jsonl, atomic_write_text, complete_groups, read_jsonl
from core.seeds import context_seed
from pipeline.documents import Document, Question, load_documents
from pipeline.store.config import StoreConfig
from pipeline.store.plan import UpdatePlan
from pipeline.store.probes import teacher_probes
from pipeline.store.state import PendingJob, describe_writer

EDITS = "edits.jsonl"
PROBES = "probes.jsonl"


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _teacher(model: ModelSettings) -> dict:
    from core.provenance import model_identity

    identity = model_identity(model.path)
    return {"teacher": identity.pop("path"), **identity}


def self_edit_writer(config: StoreConfig) -> dict:
    """What writes this update's self-edits: the edits file (its sha256) or the teacher (its content hash), with a
    digest of the settings that shape what it writes."""
    shaping = {"self_edit": to_dict(config.self_edit), "passages": to_dict(config.passages), "seed": config.seed}
    if config.edits.file:
        from core.hashing import file_sha256

        path = Path(config.edits.file).expanduser()
        if not path.is_file():
            raise UserError(f"self-edits file not found: {config.edits.file}")
        return {"edits": str(config.edits.file), "sha256": file_sha256(path),
                "settings": _digest({**shaping, "start": config.edits.start, "count": config.edits.count})}
    from core.models import check_model_reference

    check_model_reference(config.teacher.model.path, "teacher", allow_adapter=True)
    return {**_teacher(config.teacher.model), "settings": _digest({**shaping, "backend": config.teacher.backend,
                                                     "generation": to_dict(config.teacher.generation)})}


def probe_writer(config: StoreConfig) -> dict | None:
    """The teacher that writes probes for documents without questions (None: none is written)."""
    if not (config.probes.teacher_questions and config.teacher.model.path):
        return None
    return {**_teacher(config.teacher.model), "settings": _digest({"probes": to_dict(config.probes), "seed": config.seed,
                                                     "generation": to_dict(config.teacher.generation),
                                                     "backend": config.teacher.backend})}


# -------------------------------------------------------------------------------------------- the job
def open_pending(store, number: int, plan: UpdatePlan, writer: dict, probes_by: dict | None) -> PendingJob:
    """Start update `number`, or continue the interrupted one with what of it is still valid; returns its job."""
    old = store.pending_job()
    if old is None or old.number != number:
        shutil.rmtree(store.pending, ignore_errors=True)  # none, unreadable, or another update's: start afresh
        old = None
    probe_keys = [a.key for a in plan.absorb if not a.doc.questions]
    if probes_by is None:  # no teacher now: the probes an earlier teacher wrote for an unchanged document stay
        earlier = (old.probes_by or {}) if old is not None else {}
        writers = {k: earlier[k] for k in probe_keys if k in earlier}
    else:
        writers = {k: probes_by for k in probe_keys}
    job = PendingJob(number=number, documents=plan.keys, self_edits_by={k: writer for k in plan.keys},
                     probes_by=writers)
    if old is not None:
        kept = _keep(store.pending / EDITS, old.documents, old.self_edits_by, job.self_edits_by)
        _keep(store.pending / PROBES, old.documents, old.probes_by, job.probes_by)
        _say_resumed(number, old, job, kept)
    store.write_pending_job(job)
    return job


def _keep(path: Path, old_keys: list[str], old_by: dict | None, new_by: dict) -> set[str]:
    """Drop from `path` the records of documents not written by what now writes them (or since changed); returns
    the ids of the documents whose records stay."""
    valid = {k.rsplit("@", 1)[0] for k, w in new_by.items() if k in old_keys and (old_by or {}).get(k) == w}
    records = read_jsonl(path)
    kept = [r for r in records if r.get("document") in valid]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return {r["document"] for r in kept}


def _say_resumed(number: int, old: PendingJob, job: PendingJob, kept: set[str]) -> None:
    added = [k for k in job.documents if k not in old.documents]
    rewritten = [k for k in job.documents if k in old.documents and k.rsplit("@", 1)[0] not in kept
                 and (old.self_edits_by or {}).get(k) not in (None, job.self_edits_by[k])]
    dropped = [k for k in old.documents if k not in job.documents]
    msg = f"store: resuming update {number}: self-edits of {len(kept)} of {len(job.documents)} documents kept"
    if added:
        msg += f", {len(added)} documents added to it"
    if dropped:
        msg += f", {len(dropped)} no longer in it (changed or gone)"
    if rewritten:
        msg += (f"; {len(rewritten)} written by {describe_writer(old.self_edits_by[rewritten[0]])} are written "
                f"again by {describe_writer(job.self_edits_by[rewritten[0]])}")
    if old.self_edits_by is None:
        msg += "; the interrupted update did not record what wrote its self-edits, so they are written again"
    say(msg)


# ---------------------------------------------------------------------------------- self-edits and probes
def write_inputs(config: StoreConfig, docs: list[Document], pending: Path, progress: bool):
    """The self-edit records, the adapt-student plan of passages, and each document's probes; the teacher (when
    one is needed) is loaded once for both and freed before the student loads."""
    with ExitStack() as stack:
        opened: list = []

        def teacher():
            if not opened:
                from pipeline.sampling import teacher_backend

                opened.append(stack.enter_context(teacher_backend(config.teacher)))
            return opened[0]

        records, text_plan = self_edits(config, docs, pending, progress, teacher)
        probes = write_probes(config, docs, pending, teacher)
    return records, text_plan, probes


def self_edits(config: StoreConfig, docs: list[Document], pending: Path, progress: bool, teacher):
    from pipeline.plan import plan_passages
    from pipeline.self_edits import write_given_edits, write_self_edits

    def plan(with_teacher: bool):
        return plan_passages(docs, student=config.student, teacher=config.teacher, self_edit=config.self_edit,
                             passages=config.passages, with_teacher=with_teacher, say=say)

    if config.edits.file:
        from pipeline.edits import is_paper_json, load_jsonl_edits

        if not Path(config.edits.file).expanduser().is_file():
            raise UserError(f"self-edits file not found: {config.edits.file}")
        if is_paper_json(config.edits.file):
            raise UserError(f"{config.edits.file}: a store reads self-edits as JSONL {{document, completion}} lines "
                            "naming documents of --docs (the paper's JSON holds its own passages)")
        everything = load_documents(config.docs)
        given = load_jsonl_edits(config.edits.file, docs, start=config.edits.start, count=config.edits.count,
                                 others=everything, skip_unknown=True)
        text_plan = plan(False)
        return write_given_edits(docs, given, pending / EDITS, self_edit=config.self_edit,
                                 edits=config.edits), text_plan
    from core.models import check_model_reference

    check_model_reference(config.teacher.model.path, "teacher", allow_adapter=True)
    text_plan = plan(True)
    return write_self_edits(docs, pending / EDITS, teacher=config.teacher, self_edit=config.self_edit,
                            seed=config.seed, plan=text_plan, open_teacher=teacher, progress=progress), text_plan


def write_probes(config: StoreConfig, docs: list[Document], pending: Path, teacher) -> dict[str, list[Question]]:
    """Each new document's probes: its own questions, else the teacher's (resumable: one line per document)."""
    out = {d.id: list(d.questions) for d in docs if d.questions}
    want = [d for d in docs if not d.questions]
    path = pending / PROBES
    done = complete_groups(path, "document", 1)
    for d in want:
        if d.id in done:
            out[d.id] = [Question(q["question"], tuple(q["answers"])) for q in done[d.id][0]["questions"]]
    todo = [d for d in want if d.id not in out]
    if todo and config.probes.teacher_questions and config.teacher.model.path:
        backend, _ = teacher()
        for d in todo:
            (qs,) = teacher_probes(backend, [d], config.probes, config.teacher.generation,
                                   [context_seed(config.seed, "probes", d.id)]).values()
            append_jsonl(path, {"document": d.id, "questions": [{"question": q.question,
                                                                 "answers": list(q.answers)} for q in qs]})
            out[d.id] = qs
    for d in docs:
        out.setdefault(d.id, [])
    blind = [d.id for d in docs if not out[d.id]]
    if blind:
        say(f"store: {len(blind)} documents have no probe questions and are absorbed unmeasured: "
            + ", ".join(blind[:5]) + (" ..." if len(blind) > 5 else "")
            + ("" if config.probes.teacher_questions and config.teacher.model.path else
               " (give --questions, or name a --teacher to write them)"))
    return out
