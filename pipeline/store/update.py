"""`seal-tt update`: absorb what is new in a folder of documents into a knowledge store, measure what was kept.

One update, meant to run from cron or a scheduler every few hours: `update_store` takes the store's lock (a second
run refuses, or waits with --wait), checks the store and diffs the folder against it by content hash (`plan`): new
documents, changed ones (absorbed again; what happens to the old version is the strategy's), unchanged ones
(skipped), ones the gate rejected before (skipped until they change). Then `StoreUpdate` runs five steps:

1. plan: the pending update is opened, or the interrupted one continued per document (`pending`);
2. self-edits: the teacher writes them for the new versions (or `--edits` gives them), and probe questions for the
   documents that have none; all of it lands in `.pending/` as it is written;
3. train: the student is loaded with the store applied, scores the probes of the new documents (base and before)
   and of a budget of earlier ones (before), and trains what the strategy trains;
4. evaluate: the update is applied as the strategy applies it and scored again (after); the gate (when set) rejects
   or scales down an update that drops the earlier probes by more than its budget; the drift from the base;
5. commit: the update's folder moves into `updates/`, then `state.json` is replaced in one rename.

A rerun after a crash at any point gives the same store.
"""

from __future__ import annotations

import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from core.config import check_ranges
from core.errors import UserError
from core.progress import say
from core.rundir import atomic_write_json, atomic_write_text
from core.seeds import context_seed
from pipeline.documents import Document, Question
from pipeline.store import scores
from pipeline.store.config import StoreConfig
from pipeline.store.layout import Store, StoreBusy, now
from pipeline.store.metrics import kl_bits_per_token, store_metrics
from pipeline.store.pending import EDITS, open_pending, probe_writer, self_edit_writer, write_inputs
from pipeline.store.plan import UpdatePlan, content_hash, plan_update, say_plan, version_key
from pipeline.store.probes import sample_earlier
from pipeline.store.report import update_markdown
from pipeline.store.settings import check_fixed, fixed_settings, with_store_settings
from pipeline.store.state import (DocumentHistory, MatrixRow, Rejection, StoreState, StoredDocument, UpdateEntry,
                                  Version)
from pipeline.store.strategies import strategy_named
from pipeline.store.student import routing_text

# Names other modules and tests import from here.
__all__ = ["update_store", "update_markdown", "store_metrics", "plan_update", "content_hash", "version_key",
           "fixed_settings", "with_store_settings", "StoreUpdate"]
_check_fixed = check_fixed


def update_store(config: StoreConfig, *, wait: bool = False, progress: bool = True) -> dict:
    """Run (or resume) one update of the store; returns its report (`{"nothing_new": True, ...}` when idle)."""
    check_ranges(config)
    store = Store(config.store)
    if not store.exists:
        store.check_new_location()
    created = not store.path.exists()
    try:
        return _locked_update(config, store, wait, progress)
    except UserError:
        if created and not store.exists and not isinstance(sys.exc_info()[1], StoreBusy):
            shutil.rmtree(store.path, ignore_errors=True)  # a first update that failed leaves no folder behind
        raise


def _locked_update(config: StoreConfig, store: Store, wait: bool, progress: bool) -> dict:
    with store.locked(wait=wait):
        if not store.exists:
            from core.models import check_model_reference

            check_model_reference(config.student.model.path, "student")
            if not plan_update(config, StoreState()).absorb:  # bad input fails before anything exists
                raise UserError(f"no documents found in {', '.join(config.docs)}")
            store.create(fixed_settings(config))
            say(f"store: created {store.path} (strategy {config.strategy})")
        manifest = store.manifest()
        config = with_store_settings(config, manifest.settings)
        check_fixed(store, manifest, config)
        state = store.state()
        dropped = store.drop_uncommitted(state)
        if dropped:
            say(f"store: update {dropped[0]} was interrupted while committing; redoing it")
        plan = plan_update(config, state)
        say_plan(plan)
        if not plan.absorb:
            shutil.rmtree(store.pending, ignore_errors=True)
            return {"nothing_new": True, "store": str(store.path), "unchanged": plan.unchanged,
                    "rejected": plan.rejected, "missing": plan.missing}
        return StoreUpdate(config, store, state, plan, progress).run().to_json()


@dataclass
class Scored:
    """Probe scores an update keeps between its steps (document key -> scores in probe order)."""

    new_probes: list = field(default_factory=list)  # (key, Question) of the documents it absorbs
    earlier_probes: list = field(default_factory=list)  # of the sampled earlier documents
    sample: list[str] = field(default_factory=list)
    earlier: list[str] = field(default_factory=list)
    base: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)
    before_new: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    after_new: dict = field(default_factory=dict)
    oracle: dict = field(default_factory=dict)


class StoreUpdate:
    """One update of a store, in five steps; each step keeps what the next needs on `self`."""

    def __init__(self, config: StoreConfig, store: Store, state: StoreState, plan: UpdatePlan, progress: bool):
        self.config, self.store, self.state, self.plan, self.progress = config, store, state, plan, progress
        self.strategy = strategy_named(config.strategy)
        self.number = state.next_number()
        self.docs = plan.docs
        self.timings: dict[str, float] = {}
        self.scored = Scored()
        self.superseded = {state.current(d.id).key for d in self.docs if state.current(d.id) is not None}

    def run(self) -> UpdateEntry:
        self.start()
        self.write_self_edits()
        self.train()
        self.evaluate()
        return self.commit()

    @contextmanager
    def timed(self, name: str):
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0

    # -------------------------------------------------------------------------------------------- 1. plan
    def start(self) -> None:
        """The pending update: opened, or the interrupted one continued with what of it is still valid."""
        self.writer = self_edit_writer(self.config)
        self.job = open_pending(self.store, self.number, self.plan, self.writer, probe_writer(self.config))

    # -------------------------------------------------------------------------------------- 2. self-edits
    def write_self_edits(self) -> None:
        from pipeline.self_edits import training_sequences

        config = self.config
        with self.timed("teacher_seconds"):
            self.records, text_plan, self.probes = write_inputs(config, self.docs, self.store.pending, self.progress)
        t = training_sequences(self.docs, self.records, text_plan, self_edit=config.self_edit,
                               max_length=config.student.train.max_length,
                               num_samples=config.teacher.generation.num_samples, edits_file=config.edits.file)
        self.texts_by_doc, self.contexts_by_doc, self.split = t.texts, t.contexts, t.split

    # ------------------------------------------------------------------------------------------- 3. train
    def train(self) -> None:
        from student.checkpoint import TrainCheckpoint

        with self.timed("load_seconds"):
            self._load_student()
        with self.timed("probe_before_seconds"):
            self._score_before()
        config, number = self.config, self.number
        with self.timed("train_seconds"):
            seed = context_seed(config.seed, "update", number)
            new = [p for d in self.docs for p in zip(self.texts_by_doc[d.id], self.contexts_by_doc[d.id])]
            pairs, self.replayed = self.strategy.training_set(
                new, self._earlier_pairs, config.replay, context_seed(config.seed, "replay", number))
            self.texts = [t for t, _ in pairs]
            tr = config.student.train
            # Only a distilling update hands the passages over: an nll checkpoint's fingerprint stays as it was.
            contexts = [c for _, c in pairs] if tr.objective == "context_distill" else None
            ckpt = TrainCheckpoint(self.store.pending / "train_checkpoint", every_seconds=60 * tr.checkpoint_minutes,
                                   every_steps=tr.checkpoint_steps)
            say(f"store: update {number}: training on {len(self.texts)} sequences ({len(self.texts) - self.replayed} "
                f"new" + (f", {self.replayed} replayed" if self.replayed else "") + f"), strategy {config.strategy}")
            self.strategy.before_training(self.student)
            self.engine.reset(seed=seed)
            self.stats = self.engine.train_texts(self.texts, tr, seed=seed, contexts=contexts, progress=self.progress,
                                                 checkpoint=ckpt)
            self.trained = self.engine.adapter_state()

    def _load_student(self) -> None:
        from student.engine import StudentEngine

        config, s = self.config, self.scored
        self.engine = engine = StudentEngine(config.student.model, config.student.lora)
        self.student = self.strategy.student(engine, config.student.eval)
        self.drift_ids = scores.drift_ids(engine.tokenizer, config.drift.text, config.drift.max_tokens)
        engine.reset(seed=0)
        with engine.adapter_disabled():
            self.base_logprobs = engine.next_token_logprobs(self.drift_ids)
        s.new_probes = [(a.key, q) for a in self.plan.absorb for q in self.probes[a.doc.id]]
        s.base = scores.items(s.new_probes, self.student.score(s.new_probes))  # nothing applied yet: the base
        self.student.load(self.store, self.state)

    def _score_before(self) -> None:
        config, state, s = self.config, self.state, self.scored
        s.earlier = [k for k in state.active() if k not in self.superseded]
        s.sample = sample_earlier(s.earlier, config.probes.max_documents,
                                  context_seed(config.seed, "probes", self.number))
        s.earlier_probes = [(k, Question(p["question"], tuple(p["answers"])))
                            for k in s.sample for p in self.store.read_document(k).probes]
        # The student has not changed since the last update's row was written: its cells are this update's "before".
        last = state.matrix[-1].items if state.matrix else {}
        unknown = [p for p in s.earlier_probes if p[0] not in last]
        s.before = {**{k: last[k] for k in s.sample if k in last},
                    **scores.items(unknown, self.student.score(unknown))}
        s.before_new = scores.items(s.new_probes, self.student.score(s.new_probes))

    def _earlier_pairs(self) -> list[tuple[str, str | None]]:
        """(text, passage) of each training sequence of the current earlier documents (what joint and replay train on
        again). A distilling update refuses a document whose passages cannot be known."""
        out = []
        for k in self.state.active():
            if k in self.superseded:
                continue
            pairs = training_pairs(self.store.read_document(k))
            if self.config.student.train.objective == "context_distill" and any(c is None for _, c in pairs):
                raise UserError(
                    f"store {self.store.path}: document {k!r} was stored by an earlier seal-tt without the passages "
                    "of its training texts, nor the title and text to derive them from, so "
                    "student.train.objective=context_distill cannot train on it again; absorb the folder into a new "
                    "--store")
            out += pairs
        return out

    # ---------------------------------------------------------------------------------------- 4. evaluate
    def evaluate(self) -> None:
        """The gate's tries (the update applied at a scale, the earlier probes scored), the oracle and the drift."""
        student, s, gate = self.student, self.scored, self.config.gate
        with self.timed("probe_after_seconds"):
            self.strategy.stage(student, self.trained, self.number, state=self.state, store=self.store,
                                superseded=self.superseded,
                                staged={a.key: routing_text(a.doc.title, a.doc.text, self.texts_by_doc[a.doc.id])
                                        for a in self.plan.absorb})
            self.scale, self.tries = 1.0, []
            while True:
                self.strategy.apply(student, self.trained, self.scale, self.number)
                s.after_new = scores.items(s.new_probes, student.score(s.new_probes))
                s.after = scores.items(s.earlier_probes, student.score(s.earlier_probes))
                self.drop = scores.drop(s.before, s.after)
                self.broken = scores.broken(s.earlier_probes, s.before, s.after)
                self.tries.append({"scale": self.scale, "drop": self.drop, "broken": len(self.broken)})
                if gate.max_drop is None or self.drop is None or self.drop <= gate.max_drop + 1e-12:
                    self.decision = "accepted" if self.scale == 1.0 else "scaled"
                    break
                if gate.action == "scale" and self.scale / 2 >= gate.min_scale - 1e-12:
                    self.scale /= 2
                    continue
                self.decision = "rejected"
                break
            self.drift = None
            if self.decision != "rejected":
                probes_all = s.new_probes + s.earlier_probes
                oracle = self.strategy.oracle_scores(student, probes_all)
                s.oracle = scores.items(probes_all, oracle) if oracle is not None else {}
                self.drift = self.strategy.drift(student, lambda: kl_bits_per_token(
                    self.base_logprobs, self.engine.next_token_logprobs(self.drift_ids)))

    # ------------------------------------------------------------------------------------------ 5. commit
    def commit(self) -> UpdateEntry:
        """Stage the update's folder (its adapter, report, self-edits), then move it in and replace the state."""
        entry, s = self._entry(), self.scored
        new_state = self.state.copy()
        staged = self.store.pending / "staged"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        if entry.accepted:
            self.engine.load_adapter_state(self.trained)
            self.engine.save_adapter(staged / "adapter")
            entry.adapter_mb = round(sum(p.stat().st_size for p in (staged / "adapter").rglob("*")) / 2**20, 3)
            entry.notes = self._absorb_into(new_state)
            # Earlier documents outside this update's probe budget get no cell in its row (unknown, not assumed).
            after = {**s.after, **s.after_new}
            new_state.matrix.append(MatrixRow(update=self.number, scores=scores.doc_means(after), items=after,
                                              before_new=scores.doc_means(s.before_new),
                                              oracle=scores.doc_means(s.oracle)))
            new_state.base.update(scores.doc_means(s.base))
        else:
            for a in self.plan.absorb:
                new_state.rejected[a.key] = Rejection(update=self.number, id=a.doc.id, drop=self.drop)
        entry.metrics = store_metrics(new_state)
        new_state.updates.append(entry)
        atomic_write_json(staged / "update.json", entry.to_json())
        shutil.copy(self.store.pending / EDITS, staged / EDITS)
        atomic_write_text(staged / "report.md", update_markdown(entry.to_json()))
        self.store.commit(self.number, staged, new_state)
        return entry

    def _entry(self) -> UpdateEntry:
        s, docs, stats = self.scored, self.docs, self.stats
        return UpdateEntry(
            number=self.number, finished=now(), accepted=self.decision != "rejected", decision=self.decision,
            scale=self.scale, documents=self.plan.keys, new=self.plan.new, changed=self.plan.changed,
            sequences=len(self.texts), replayed=self.replayed, sequences_split=self.split, steps=stats.steps,
            final_loss=stats.final_loss, drift_bits_per_token=self.drift, retention_before=scores.macro(s.before),
            retention_after=scores.macro(s.after), drop=self.drop, gate_tries=self.tries,
            probed_earlier=len(s.sample), earlier=len(s.earlier),
            unmeasured=[d.id for d in docs if not self.probes[d.id]],
            teacher_probes=[d.id for d in docs if self.probes[d.id] and not d.questions],
            self_edits_by=dict(self.job.self_edits_by), timings={k: round(v, 3) for k, v in self.timings.items()},
            broken=self.broken[:100])

    def _absorb_into(self, state: StoreState) -> list[str]:
        """The absorbed versions written to the store and named in `state`; the strategy's notes on what changed."""
        notes, by_doc = [], {}
        for r in self.records:
            by_doc.setdefault(r["document"], []).append(r["self_edit"])
        for order, a in enumerate(self.plan.absorb):
            doc, qs = a.doc, self.probes[a.doc.id]
            source = "user" if doc.questions else ("teacher" if qs else None)
            self.store.write_document(StoredDocument(
                key=a.key, id=doc.id, title=doc.title, text=doc.text, hash=a.digest,
                self_edits=by_doc.get(doc.id, []), training_texts=self.texts_by_doc[doc.id],
                probes=[{"question": q.question, "answers": list(q.answers)} for q in qs], probe_source=source,
            ).with_contexts(self.contexts_by_doc[doc.id]))
            version = Version(key=a.key, hash=a.digest, update=self.number, order=order, added=now(),
                              probes=len(qs), probe_source=source)
            history = state.documents.setdefault(doc.id, DocumentHistory())
            if history.versions:
                old = history.versions[-1]
                old.superseded_by = a.key
                note = self.strategy.on_changed(doc.id, old)
                if note:
                    notes.append(note)
            history.versions.append(version)
        return notes + self.strategy.retire(state)


def training_pairs(doc: StoredDocument) -> list[tuple[str, str | None]]:
    """(text, passage) of each training sequence of a stored document version. A record of an earlier version keeps
    no passages: its texts get the stored document's own (what a document absorbed whole distils from), or None
    when the record lacks its title or text."""
    from pipeline.tasks.knowledge import distill_context

    contexts = doc.training_contexts()
    if contexts is None and doc.has("title") and doc.has("text") and doc.text:
        contexts = [distill_context(Document(doc.id, doc.title, doc.text))] * len(doc.training_texts)
    return list(zip(doc.training_texts, contexts or [None] * len(doc.training_texts)))
