"""Self-edits on disk: the teacher's (sampled per passage, resumable) or given ones, and the training sequences
they become.

`self_edits.jsonl` holds one line per self-edit, appended per passage as the teacher finishes it (a passage's group
cut short by a kill is drawn again whole). Each line names its document (and its passage when the document was
split), the prompt and seed it was drawn with, the completion, and the training sequences it splits into.

Used by adapt-student (`pipeline.adapt`) and the store's update (`pipeline.store`), each handing over the settings
these functions read: the teacher (model, backend, generation), how a self-edit is split (`SelfEditSettings`), the
seed.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from core.config import EditsSettings, SelfEditSettings, TeacherSettings
from core.errors import UserError
from core.progress import progress_bar, say
from core.rundir import append_jsonl, atomic_write_text, complete_groups
from core.seeds import context_seed
from pipeline.documents import Document
from pipeline.plan import MARGIN, AdaptPlan, fit_sequences
from pipeline.sampling import teacher_backend
from pipeline.tasks import knowledge


def units(docs: list[Document], plan: AdaptPlan | None) -> list[tuple[Document, Document]]:
    """(document, passage) pairs the teacher writes for: a document that fits is its own passage, keeping its id."""
    out = []
    for doc in docs:
        p = plan.plans.get(doc.id) if plan is not None else None
        out += [(doc, passage) for passage in p.passages] if p is not None and p.split else [(doc, doc)]
    return out


def unit_key(rec: dict) -> str:
    """The passage a self-edit record was written for (records of unsplit documents, and older runs, name none)."""
    return rec.get("passage", rec["document"])


def training_texts(doc: Document, completion: str, self_edit: SelfEditSettings) -> dict:
    """A completion's training sequences, and what the split cut (the 30-sequence cap, a CoT's reasoning)."""
    pieces, cut = knowledge.split_self_edit_report(completion, self_edit)
    return {"training_texts": [knowledge.with_title(doc, t, self_edit) for t in pieces], "split": cut}


def write_given_edits(docs: list[Document], given: dict[str, list[str]], path: Path, *,
                      self_edit: SelfEditSettings, edits: EditsSettings) -> list[dict]:
    """The records of pre-written self-edits (`edits.file`, from index `edits.start`), in the same layout as the
    teacher's (no prompt, no seed); `path` is rewritten whole."""
    from pipeline import stamps

    made_by = stamps.edits_id(edits.file)
    records = [
        {"document": doc.id, "sample": edits.start + i, "source": str(edits.file), "self_edit": text,
         **training_texts(doc, text, self_edit), stamps.KEY: stamps.stamp(doc.text, "", made_by)}
        for doc in docs for i, text in enumerate(given[doc.id])
    ]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    say(f"self-edits: {len(records)} given for {len(docs)} documents ({edits.file}); no teacher loaded")
    return records


def expected_stamps(docs: list[Document], plan: AdaptPlan | None, *, teacher: TeacherSettings | None = None,
                    self_edit: SelfEditSettings, edits_file: str | None = None) -> tuple[dict, dict, str]:
    """(passage id -> the stamp its self-edits carry when written now, passage id -> its prompt, the writer's
    identity): the teacher's content hash, or with `edits_file` that file's (given self-edits, keyed by document)."""
    from pipeline import stamps

    if edits_file:
        made_by = stamps.edits_id(edits_file)
        return {d.id: stamps.stamp(d.text, "", made_by) for d in docs}, {}, made_by
    pairs = units(docs, plan)
    prompt_of = dict(zip([p.id for _, p in pairs], knowledge.teacher_prompts([p for _, p in pairs], self_edit)))
    made_by = stamps.model_id(teacher.model.path)
    return {p.id: stamps.stamp(p.text, prompt_of[p.id], made_by) for _, p in pairs}, prompt_of, made_by


def changed_since(path: Path, docs: list[Document], plan: AdaptPlan | None, *, teacher: TeacherSettings | None,
                  self_edit: SelfEditSettings, edits_file: str | None = None) -> int:
    """How many passages' self-edits in `path` (a finished run's) carry a stamp that the current documents, prompt
    and teacher (or edits file) no longer give, or are missing. Records from before stamps are not counted."""
    from core.rundir import read_jsonl
    from pipeline import stamps

    expected, _, _ = expected_stamps(docs, plan, teacher=teacher, self_edit=self_edit, edits_file=edits_file)
    found: dict[str, list] = {}
    for rec in read_jsonl(path):
        found.setdefault(rec["document"] if edits_file else unit_key(rec), []).append(rec.get(stamps.KEY))
    return sum(1 for key, want in expected.items()
               if key not in found or any(s is not None and not stamps.matches(s, want) for s in found[key]))


def write_self_edits(docs: list[Document], path: Path, *, teacher: TeacherSettings, self_edit: SelfEditSettings,
                     seed: int, plan: AdaptPlan | None = None, engine=None, open_teacher=None,
                     progress: bool = True) -> list[dict]:
    """Sample `teacher.generation.num_samples` self-edits per passage, appending each finished passage's lines;
    resumes from what `path` holds. Returns every record, in passage order.

    `engine`: the student, when it is the teacher's model too (sampled with its adapter off). `open_teacher`: a
    callable giving an already open (backend, adapter_off), for a caller that samples more than self-edits from one
    loaded teacher; called only when something is left to sample."""
    from pipeline import stamps

    k = teacher.generation.num_samples
    pairs = units(docs, plan)
    expected, prompt_of, made_by = expected_stamps(docs, plan, teacher=teacher, self_edit=self_edit)
    # A passage whose text or prompt changed, or written by another teacher, is written again; records from before
    # stamps are kept (and stamped) if they record the current prompt and the run recorded the current teacher.
    same_teacher = stamps.recorded_model_agrees(Path(path).parent, "teacher", made_by)
    done = stamps.resume(path, complete_groups(path, unit_key, k), expected, what="self-edits", unit="passages",
                         legacy=lambda key, recs: same_teacher and all(r.get("prompt") == prompt_of[key]
                                                                       for r in recs))
    todo = [(d, p) for d, p in pairs if p.id not in done]
    if len(todo) < len(pairs):
        say(f"self-edits: those of {len(pairs) - len(todo)} of {len(pairs)} passages reused from {path}"
            + (f"; {len(todo)} to write" if todo else "; the teacher is not loaded"))
    if todo:
        prompts = prompt_of
        opened = nullcontext(open_teacher()) if open_teacher is not None else teacher_backend(teacher, engine)
        with opened as (backend, adapter_off):
            for parent, doc in progress_bar(todo, desc="teacher: writing self-edits", enabled=progress):
                sample_seed = context_seed(seed, "teacher", doc.id)
                with adapter_off():
                    (samples,) = backend.sample([prompts[doc.id]], teacher.generation, [sample_seed])
                lines = [
                    {
                        "document": parent.id,
                        **({"passage": doc.id} if doc is not parent else {}),
                        "sample": i,
                        "seed": sample_seed,
                        "prompt": prompts[doc.id],
                        "self_edit": s.text,
                        "num_tokens": s.num_tokens,
                        "finished": s.finished,
                        **training_texts(doc, s.text, self_edit),
                        stamps.KEY: expected[doc.id],
                    }
                    for i, s in enumerate(samples)
                ]
                for line in lines:
                    append_jsonl(path, line)
                done[doc.id] = lines
    return [rec for _, p in units(docs, plan) for rec in done[p.id]]


@dataclass
class TrainingTexts:
    """Each document's training sequences, and beside each the text of the passage it was written for (what
    student.train.objective=context_distill puts in the prompt of the student it distils from)."""

    texts: dict[str, list[str]]
    contexts: dict[str, list[str]] = field(default_factory=dict)
    split: int = 0  # sequences longer than train.max_length that were split (never cut)

    def joined(self, docs: list[Document]) -> tuple[list[str], list[str]]:
        """(texts, contexts) of all `docs`, in document order: one adapter's training set."""
        return ([t for d in docs for t in self.texts[d.id]], [c for d in docs for c in self.contexts[d.id]])


def training_sequences(docs: list[Document], edits: list[dict], plan: AdaptPlan | None, *,
                       self_edit: SelfEditSettings, max_length: int, num_samples: int,
                       edits_file: str | None = None) -> TrainingTexts:
    """Each document's training sequences from its self-edit records (plus its passages with include_passage),
    longer ones split at `max_length` (the student's train.max_length), never cut. Says what was capped or split.

    `num_samples` (the teacher's samples per passage) and `edits_file` (given self-edits) only word the error for a
    document left without any training text."""
    passage_text = {p.id: knowledge.distill_context(p) for _, p in units(docs, plan)}
    doc_text = {d.id: knowledge.distill_context(d) for d in docs}
    pairs: dict[str, list[tuple[str, str]]] = {d.id: [] for d in docs}
    for rec in edits:
        context = passage_text.get(unit_key(rec), doc_text[rec["document"]])
        pairs[rec["document"]].extend((t, context) for t in rec["training_texts"])
    _say_capped(edits, self_edit)
    for doc in docs:
        if not pairs[doc.id]:
            raise _no_training_text(doc, self_edit, num_samples, edits_file)
        if self_edit.include_passage:
            pairs[doc.id] += [(knowledge.with_title(doc, p.text, self_edit), knowledge.distill_context(p))
                              for _, p in units([doc], plan)]
    split = 0
    if plan is not None and plan.counter is not None:
        # Nothing is cut at train.max_length: a longer training text is split on sentence or word boundaries.
        for doc in docs:
            fitted = []
            for text, context in pairs[doc.id]:
                pieces, n = fit_sequences([text], plan.counter, max_length - MARGIN)
                fitted += [(piece, context) for piece in pieces]
                split += n
            pairs[doc.id] = fitted
        if split:
            say(f"student: {split} training sequences longer than student.train.max_length={max_length} tokens "
                "were split (not cut)")
    return TrainingTexts({d: [t for t, _ in p] for d, p in pairs.items()},
                         {d: [c for _, c in p] for d, p in pairs.items()}, split)


def _say_capped(edits: list[dict], self_edit: SelfEditSettings) -> None:
    capped = [r for r in edits if (r.get("split") or {}).get("dropped_over_cap")]
    if capped:
        say(f"self-edits: {len(capped)} completions had more than self_edit.max_sequences="
            f"{self_edit.max_sequences} sequences; {sum(r['split']['dropped_over_cap'] for r in capped)} "
            "sequences beyond the cap were left out (recorded per self-edit in self_edits.jsonl)")


def _no_training_text(doc: Document, self_edit: SelfEditSettings, num_samples: int,
                      edits_file: str | None) -> UserError:
    if edits_file:
        return UserError(f"the given self-edits for document {doc.id!r} yield no training text after "
                         f"splitting (self_edit.split={self_edit.split!r}, min_chars={self_edit.min_chars})")
    return UserError(
        f"the teacher's self-edits for document {doc.id!r} yield no training text "
        f"(all {num_samples} samples empty after splitting); "
        "try a larger teacher.generation.max_new_tokens or another self_edit.prompt with a new --output "
        "(a rerun into this one reuses these self-edits)"
    )


def sequences_over_cap(edits: list[dict]) -> int:
    """Training sequences the self_edit.max_sequences cap left out, over all records."""
    return sum((r.get("split") or {}).get("dropped_over_cap", 0) for r in edits)
