"""`adapt_student`: the teacher writes self-edits for the user's documents, the student absorbs them.

Output folder:
    config.yaml         the resolved config (a rerun with another config is refused unless forced)
    self_edits.jsonl    one line per self-edit, appended per document as the teacher finishes it (resume point)
    adapter/            PEFT adapter in safetensors (mode=joint), or adapters/<document id>/ (mode=per_document)
    merged/             with merge=true: the student with the adapter folded in
    .work/per_document.jsonl   mode=per_document: one line per absorbed document, appended after its adapter is
                        saved (resume point: a rerun skips the documents recorded there)
    failures.jsonl      mode=per_document: documents that failed every try, with their errors
    report.json         scores before and after, per document and per question, timings

mode=per_document runs behind an executor (`executor.kind`: this process, or Ray workers): each document is one
work item keyed by its id; a worker trains its adapter from the document's seed, answers its questions and returns
the record with the adapter's tensors; only this process writes files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections import defaultdict
from pathlib import Path

from core.config import AdaptConfig
from pipeline.documents import Document, load_documents, load_questions
from core.errors import UserError
from core.models import check_model_reference
from core.progress import progress_bar, say
from core import provenance
from core.provenance import model_settings
from core.seeds import context_seed
from core.rundir import (
    RunDir,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    complete_groups,
    finished_report,
    read_jsonl,
    removed_on_user_error,
    repair_jsonl,
)
from pipeline.plan import MARGIN, AdaptPlan, estimate, fit_sequences, plan_adaptation
from pipeline.sampling import free_memory, teacher_backend
from pipeline.tasks import knowledge
from pipeline.work import Scorer, WorkItem

EDITS = "self_edits.jsonl"
REPORT = "report.json"
PER_DOCUMENT = ".work/per_document.jsonl"  # mode=per_document: one line per absorbed document (the resume point)
FAILURES = "failures.jsonl"  # mode=per_document: documents that failed every try


def prepare(config: AdaptConfig) -> tuple[list[Document], dict[str, list[str]] | None]:
    """Everything that can be wrong with the input is found here, before the output folder is touched.

    Returns the documents and, with `edits.file`, the given self-edits per document (None: the teacher writes them).
    """
    from core.config import check_ranges

    check_ranges(config)
    given = None
    if config.edits.file:
        from pipeline.edits import load_edits

        docs = load_documents(config.docs, limit=config.limit) if config.docs else None
        docs, given = load_edits(config.edits.file, docs, start=config.edits.start, count=config.edits.count,
                                 limit=config.limit)
    elif not config.docs:
        raise UserError("no documents given (--docs PATH: a file, a folder, .json or .jsonl; or --edits FILE)")
    else:
        docs = load_documents(config.docs, limit=config.limit)
    if config.questions:
        docs = load_questions(config.questions, docs)
    if given is None:  # with given self-edits no teacher is loaded, so none needs to be named
        check_model_reference(config.teacher.model.path, "teacher", allow_adapter=True)
    check_model_reference(config.student.model.path, "student")
    tr = config.student.train
    if tr.checkpoint_minutes <= 0 or (tr.checkpoint_steps is not None and tr.checkpoint_steps < 1):
        raise UserError("student.train.checkpoint_minutes must be > 0 and checkpoint_steps >= 1 (or null)")
    knowledge.teacher_prompts(docs[:1], config.self_edit)  # validates the template
    if config.student.eval.metric == "llm_judge" and not config.student.eval.judge_model:
        raise UserError("student.eval.metric is llm_judge but student.eval.judge_model is not set")
    dist = config.student.distributed
    if dist.deepspeed or dist.nproc > 1:
        if config.mode != "joint":
            raise UserError("sharded training (student.distributed) trains one adapter: it needs mode=joint")
        if dist.nproc < 1:
            raise UserError("student.distributed.nproc must be at least 1")
        from core.launch import load_deepspeed_config

        load_deepspeed_config(dist.deepspeed)  # a missing or malformed file fails here, before any work
    if config.merge and config.mode != "joint":
        raise UserError("merge=true writes one merged model and needs mode=joint")
    if config.teacher.generation.num_samples < 1:
        raise UserError("teacher.generation.num_samples must be at least 1")
    check_executor(config)
    from core.lora import check_lora_targets

    # Last: it reads the student's config (seconds), after every check that reads nothing.
    check_lora_targets(config.student.model, config.student.lora, "student.lora.target_modules")
    return docs, given


def check_executor(config: AdaptConfig) -> None:
    """Only mode=per_document has work items to spread; Ray, when asked for, must be installed (said before any
    model loads)."""
    if config.executor.kind == "local":
        return
    if config.task != "knowledge" or config.mode != "per_document":
        raise UserError(f"executor.kind={config.executor.kind} runs adapt-student's mode=per_document (one work item "
                        "per document); this run trains in this process: use executor.kind=local"
                        + (" (student.distributed shards one adapter)" if config.task == "knowledge" else ""))
    from pipeline.ray_executor import import_ray

    import_ray()


def plan_run(config: AdaptConfig, docs: list[Document], given) -> AdaptPlan:
    """Split long documents into passages (only tokenizers are read); a size that cannot be handled fails here."""
    return plan_adaptation(config, docs, with_teacher=given is None, say=say)


def dry_run(config: AdaptConfig) -> dict:
    """The plan of an adaptation, printed and returned, with nothing loaded but tokenizers and nothing written."""
    docs, given = prepare(config)
    plan = plan_run(config, docs, given)
    return {"dry_run": True, "plan": plan.summary(), "estimate": estimate(config, plan, given=given)}


def adapt_student(config: AdaptConfig, *, force: bool = False, progress: bool = True) -> dict:
    """Run (or resume) an adaptation and return its report."""
    if config.task == "arc":
        from pipeline.tasks.arc.adapt import adapt_arc

        check_executor(config)
        return adapt_arc(config, force=force, progress=progress)
    if config.dry_run:
        return dry_run(config)
    docs, given = prepare(config)
    plan = plan_run(config, docs, given)
    run = RunDir(config.output)
    run.check_writable()
    with removed_on_user_error(run.path):
        # Where the documents are absorbed does not change what they give: a run may resume on another executor.
        run.start(config, force=force, ignore=("executor",))
        # A report that left documents out (they failed every try) is redone: those documents are tried again.
        report = finished_report(run, REPORT, force or bool(_report_failed(run)))
        if report is not None:
            return report
        models = {"student": model_settings(config.student.model)}
        if given is None:
            models["teacher"] = model_settings(config.teacher.model)
        provenance.record(run.path, models)
        return _run(config, docs, run, progress, given, plan)


def _run(config: AdaptConfig, docs: list[Document], run: RunDir, progress: bool,
         given: dict[str, list[str]] | None = None, plan: AdaptPlan | None = None) -> dict:
    from student.engine import StudentEngine

    timings: dict[str, float] = {}
    same_model = (given is None and config.teacher.model == config.student.model
                  and config.teacher.backend == "transformers")
    engine = None
    t0 = time.perf_counter()
    if same_model:
        engine = StudentEngine(config.student.model, config.student.lora)
    if given is not None:
        edits = write_given_edits(config, docs, given, run / EDITS)
    else:
        edits = write_self_edits(config, docs, run / EDITS, engine=engine, progress=progress, plan=plan)
    timings["teacher_seconds"] = time.perf_counter() - t0

    texts_by_doc, sequences_split = training_texts_by_document(config, docs, edits, plan)

    sharded = bool(config.student.distributed.deepspeed or config.student.distributed.nproc > 1)
    if sharded:
        # Train first, in child processes, while this process holds no copy of the student.
        if engine is not None:
            engine = None
            free_memory()
        t0 = time.perf_counter()
        texts = [t for d in docs for t in texts_by_doc[d.id]]
        sharded_stats = train_sharded(config, texts, run)
        timings["train_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if engine is None:
        engine = StudentEngine(config.student.model, config.student.lora)
    timings["student_load_seconds"] = time.perf_counter() - t0
    grader = knowledge.Grader(config.student.eval)
    ev = config.student.eval
    tr = config.student.train

    engine.reset()
    t0 = time.perf_counter()
    before = knowledge.evaluate(engine, docs, ev, grader)
    timings["eval_before_seconds"] = time.perf_counter() - t0
    open_book = knowledge.evaluate(engine, docs, ev, grader, open_book=True) if ev.open_book else None

    after: list = []
    train_stats = []
    failed: list[dict] = []  # mode=per_document: documents that failed every try
    reported = docs
    t0 = time.perf_counter()
    if sharded:
        from core.adapter_base import write_record

        write_record(run / "adapter", engine.base)  # written by the training job, which records no base
        engine.load_adapter(run / "adapter")
        train_stats.append({"document": None, **sharded_stats})
        t1 = time.perf_counter()
        after = knowledge.evaluate(engine, docs, ev, grader)
        timings["eval_after_seconds"] = time.perf_counter() - t1
    elif config.mode == "joint":
        from student.checkpoint import TrainCheckpoint

        texts = [t for d in docs for t in texts_by_doc[d.id]]
        say(f"student: training one adapter on {len(texts)} sequences from {len(docs)} documents")
        # A seeded start: the adapter depends on the self-edits and the seed only, not on what ran before in this
        # process (a teacher sampling here, or nothing at all on a resume or with --edits).
        engine.reset(seed=config.seed)
        ckpt = TrainCheckpoint(run / ".work" / "train_checkpoint", every_seconds=60 * tr.checkpoint_minutes,
                               every_steps=tr.checkpoint_steps)
        stats = engine.train_texts(texts, tr, seed=config.seed, progress=progress, checkpoint=ckpt)
        if ckpt.resumed_from:
            say(f"student: resumed training from its checkpoint at step {ckpt.resumed_from}")
        train_stats.append({"document": None, "sequences": len(texts), **_stats(stats)})
        engine.save_adapter(run / "adapter")
        timings["train_seconds"] = time.perf_counter() - t0
        if config.merge:  # (sharded runs merge on rank 0 of the job)
            from core.adapters import merge_adapter

            m = config.student.model
            merge_adapter(m.path, run / "adapter", run / "merged", dtype=m.dtype, trust_remote_code=m.trust_remote_code,
                          internal=True)
        t1 = time.perf_counter()
        after = knowledge.evaluate(engine, docs, ev, grader)
        timings["eval_after_seconds"] = time.perf_counter() - t1
    else:
        if config.executor.kind != "local":
            engine = None  # the workers load their own students: the devices are theirs
            free_memory()
        done, failed = absorb_per_document(config, docs, texts_by_doc, run, engine=engine, grader=grader,
                                           progress=progress)
        # The report covers the documents absorbed; one that failed every try is left out, never scored as wrong.
        reported = [d for d in docs if d.id in done]
        train_stats = [done[d.id]["training"] for d in reported]
        after = [knowledge.QuestionResult(**q) for d in reported for q in done[d.id]["after"]]
        before = [r for r in before if r.document in done]
        timings["train_and_eval_seconds"] = time.perf_counter() - t0

    report = _report(config, reported, edits, before, after, train_stats, timings)
    if config.mode == "per_document":
        # Folder names follow the order of all documents, failed ones included: `ask --run` reads them here.
        names = _adapter_names(docs)
        for entry in report["per_document"]:
            entry["adapter"] = f"adapters/{names[entry['id']]}"
    if open_book is not None:
        from pipeline.tasks.ceiling import ceiling_report

        kept = {d.id for d in reported}
        open_book = [r for r in open_book if r.document in kept]
        report["open_book"] = knowledge.summarize(open_book)
        report["ceiling"] = ceiling_report(after, open_book)
    if plan is not None:
        report["passages"] = plan.summary()
        report["sequences_split"] = sequences_split
    report["sequences_over_cap"] = sum((r.get("split") or {}).get("dropped_over_cap", 0) for r in edits)
    if failed:
        report["failed"] = [f["document"] for f in failed]
    atomic_write_json(run / REPORT, report)
    if failed:
        from core.errors import ItemsFailed

        say(f"student: {len(failed)} document(s) failed every try and are left out of the report; a rerun of the "
            "same command tries them again (and only them)")
        raise ItemsFailed(failed, str(run / FAILURES))
    return report


def absorb_per_document(config: AdaptConfig, docs: list[Document], texts_by_doc: dict[str, list[str]], run: RunDir,
                        *, engine=None, grader=None, progress: bool = True) -> tuple[dict[str, dict], list[dict]]:
    """One adapter per document, each document one work item (keyed by its id) on the configured executor.

    Only this process writes: an adapter under adapters/<name>/ as its result arrives, then the document's line in
    .work/per_document.jsonl, so a rerun skips every document recorded there (with the same training texts and
    settings, and its adapter in place). `engine`: the student this process holds, which the local executor trains
    on. Returns the records of every absorbed document (earlier runs' too) by id, and this run's failures."""
    from pipeline.executor import make_executor

    names = _adapter_names(docs)
    path = run / PER_DOCUMENT
    repair_jsonl(path)
    prints = {d.id: _fingerprint(config, d, texts_by_doc[d.id]) for d in docs}
    done: dict[str, dict] = {}
    for rec in read_jsonl(path):
        key = rec.get("document")
        if key in prints and rec.get("fingerprint") == prints[key] and \
                (run / "adapters" / names[key] / "adapter_model.safetensors").exists():
            done[key] = rec
    items = [WorkItem(d.id, d, {"document": d.id, "texts": texts_by_doc[d.id]}, [context_seed(config.seed, d.id)])
             for d in docs if d.id not in done]
    if done:
        say(f"student: {len(done)} of {len(docs)} documents already absorbed ({path}); {len(items)} to go")
    task = AbsorbTask(config.student.train, config.student.eval, grader)
    executor = make_executor(config.executor, task, config.student.lora, engine=engine)
    writer = AdapterWriter(config.student.model, config.student.lora)
    failures: list[dict] = []
    try:
        results = executor.run(config.student.model, items)
        for item, rec, failure in progress_bar(results, desc="student: absorbing", enabled=progress and bool(items),
                                               total=len(items)):
            if failure is not None:
                line = {"key": failure.key, "document": item.key, "tries": failure.tries, "error": failure.error,
                        "workers": failure.workers, "detail": failure.detail[-4000:]}
                append_jsonl(run / FAILURES, line)
                say(f"document {item.key}: failed after {failure.tries} tries ({failure.error})")
                failures.append(line)
                continue
            writer.save(rec.pop("adapter"), run / "adapters" / names[item.key])
            rec["fingerprint"] = prints[item.key]
            append_jsonl(path, rec)  # after the adapter: a recorded document always has its adapter
            done[item.key] = rec
    finally:
        executor.close()
    return done, failures


def _fingerprint(config: AdaptConfig, doc: Document, texts: list[str]) -> str:
    """What a document's adapter and answers depend on: a recorded result with another fingerprint is redone."""
    asdict = dataclasses.asdict
    data = {"texts": texts, "seed": context_seed(config.seed, doc.id), "train": asdict(config.student.train),
            "eval": asdict(config.student.eval), "lora": asdict(config.student.lora),
            "student": asdict(config.student.model), "questions": [asdict(q) for q in doc.questions]}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class DocumentScorer(Scorer):
    """A worker's resident student absorbing one document per work item: the LoRA reset from the document's seed,
    trained on its texts, its questions answered; the record carries the adapter's tensors (on the CPU)."""

    def score(self, item: WorkItem) -> dict:
        t0 = time.perf_counter()
        doc, texts = item.context, item.sample["texts"]
        (seed,) = item.seeds
        engine = self.engine
        engine.reset(seed=seed)
        stats = engine.train_texts(texts, self.task.train, seed=seed)
        results = knowledge.evaluate(engine, [doc], self.task.eval, self.task.grader)
        return {"document": doc.id, "seed": seed,
                "training": {"document": doc.id, "sequences": len(texts), **_stats(stats)},
                "after": [dataclasses.asdict(r) for r in results], "adapter": engine.adapter_state(),
                "timings": {"seconds": round(time.perf_counter() - t0, 3)}}


class AbsorbTask:
    """adapt-student's per-document absorption as an executor task (`scorer_class`: see pipeline/work.py)."""

    name = "absorb"
    scorer_class = DocumentScorer

    def __init__(self, train, eval_settings, grader=None):
        self.train = train
        self.eval = eval_settings
        self._grader = grader

    @property
    def grader(self):
        if self._grader is None:
            self._grader = knowledge.Grader(self.eval)
        return self._grader

    def context_id(self, doc: Document) -> str:
        return doc.id

    def __getstate__(self):
        return {**self.__dict__, "_grader": None}  # a worker builds its own (an llm_judge grader holds a model)


class AdapterWriter:
    """Adapters saved from their tensors alone, in the files `StudentEngine.save_adapter` writes (byte for byte):
    PEFT's own save, run on a weightless copy of the student (meta tensors, no memory), then read back and checked."""

    def __init__(self, model, lora):
        self.model = model
        self.lora = lora
        self._skeleton = None
        self._base = None  # the student's identity, recorded beside each adapter (core/adapter_base.py)

    def skeleton(self):
        if self._skeleton is None:
            from accelerate import init_empty_weights
            from transformers import AutoConfig, AutoModelForCausalLM

            from core.adapter_base import Base
            from core.lora import wrap_with_lora
            from core.models import resolve_model_path

            m = self.model
            path = resolve_model_path(m.path, dtype=m.dtype, device=m.device)  # as the student loads it
            cfg = AutoConfig.from_pretrained(path, trust_remote_code=m.trust_remote_code)
            with init_empty_weights():
                base = AutoModelForCausalLM.from_config(cfg, trust_remote_code=m.trust_remote_code)
            self._skeleton = wrap_with_lora(base, self.lora)
            self._base = Base(m.path, cfg)
        return self._skeleton

    def save(self, state: dict, out_dir: str | Path) -> Path:
        from core.adapters import verify_adapter
        from core.rundir import atomic_dir

        from core.adapter_base import write_record

        with atomic_dir(out_dir, internal=True) as tmp:
            self.skeleton().save_pretrained(tmp, safe_serialization=True, state_dict=state)
            verify_adapter(tmp, expected=state)
            write_record(tmp, self._base)
        return Path(out_dir)


def _report_failed(run: RunDir) -> list:
    """The documents a finished report left out because they failed every try (none: a complete report)."""
    path = run / REPORT
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("failed") or []
    except (OSError, json.JSONDecodeError):
        return []


def training_texts_by_document(config: AdaptConfig, docs: list[Document], edits: list[dict],
                               plan: AdaptPlan | None) -> tuple[dict[str, list[str]], int]:
    """Each document's training sequences from its self-edit records (plus its passages with include_passage),
    longer ones split at train.max_length, never cut; and how many were split. Says what was capped or split."""
    texts_by_doc = {d.id: [] for d in docs}
    for rec in edits:
        texts_by_doc[rec["document"]].extend(rec["training_texts"])
    capped = [r for r in edits if (r.get("split") or {}).get("dropped_over_cap")]
    if capped:
        say(f"self-edits: {len(capped)} completions had more than self_edit.max_sequences="
            f"{config.self_edit.max_sequences} sequences; {sum(r['split']['dropped_over_cap'] for r in capped)} "
            "sequences beyond the cap were left out (recorded per self-edit in self_edits.jsonl)")
    for doc in docs:
        if not texts_by_doc[doc.id]:
            if config.edits.file:
                raise UserError(f"the given self-edits for document {doc.id!r} yield no training text after "
                                f"splitting (self_edit.split={config.self_edit.split!r}, "
                                f"min_chars={config.self_edit.min_chars})")
            raise UserError(
                f"the teacher's self-edits for document {doc.id!r} yield no training text "
                f"(all {config.teacher.generation.num_samples} samples empty after splitting); "
                "try a larger teacher.generation.max_new_tokens or another self_edit.prompt with a new --output "
                "(a rerun into this one reuses these self-edits)"
            )
        if config.self_edit.include_passage:
            texts_by_doc[doc.id] += [knowledge.with_title(doc, p.text, config.self_edit)
                                     for _, p in units([doc], plan)]
    sequences_split = 0
    if plan is not None and plan.counter is not None:
        # Nothing is cut at train.max_length: a longer training text is split on sentence or word boundaries.
        for doc in docs:
            texts_by_doc[doc.id], n = fit_sequences(texts_by_doc[doc.id], plan.counter,
                                                    config.student.train.max_length - MARGIN)
            sequences_split += n
        if sequences_split:
            say(f"student: {sequences_split} training sequences longer than student.train.max_length="
                f"{config.student.train.max_length} tokens were split (not cut)")
    return texts_by_doc, sequences_split


def train_sharded(config: AdaptConfig, texts: list[str], run: RunDir) -> dict:
    """One adapter trained on `texts` by `nproc` launched processes (DeepSpeed ZeRO when configured)."""
    import dataclasses
    import os

    from core.launch import launch_sharded
    from student.distributed import ShardedSpec

    dist = config.student.distributed
    work = run / ".sharded"
    from core.models import resolve_model_path

    m = config.student.model
    spec = ShardedSpec(
        # A GGUF student is converted here, once, not by every rank.
        model_path=resolve_model_path(m.path, dtype=m.dtype, device=m.device),
        output_dir=str(work),
        texts=texts,
        lora=dataclasses.asdict(config.student.lora),
        train={**{("lr" if k == "learning_rate" else k): v for k, v in dataclasses.asdict(config.student.train).items()},
               "seed": config.seed},
        deepspeed_config=dist.deepspeed,
        merge=config.merge,
    )
    say(f"student: training one adapter on {len(texts)} sequences, {dist.nproc} processes ({dist.launcher}"
        + (f", DeepSpeed {dist.deepspeed}" if dist.deepspeed else "") + ")")
    result = launch_sharded(spec, dist.nproc, dist.launcher)
    for name in ("adapter", "merged"):
        if (work / name).exists():
            if (run / name).exists():
                import shutil

                shutil.rmtree(run / name)
            os.replace(work / name, run / name)
    return {"sequences": len(texts), "steps": result.get("steps"), "world_size": result.get("world_size"),
            "zero_stage": result.get("zero_stage"), "final_loss": (result.get("losses") or [None])[-1]}


def _training_texts(doc: Document, completion: str, config: AdaptConfig) -> dict:
    """A completion's training sequences, and what the split cut (the 30-sequence cap, a CoT's reasoning)."""
    pieces, cut = knowledge.split_self_edit_report(completion, config.self_edit)
    return {"training_texts": [knowledge.with_title(doc, t, config.self_edit) for t in pieces], "split": cut}


def write_given_edits(config: AdaptConfig, docs: list[Document], given: dict[str, list[str]], path: Path) -> list[dict]:
    """The records of pre-written self-edits, in the same layout as the teacher's (no prompt, no seed)."""
    records = [
        {"document": doc.id, "sample": config.edits.start + i, "source": str(config.edits.file), "self_edit": text,
         **_training_texts(doc, text, config)}
        for doc in docs for i, text in enumerate(given[doc.id])
    ]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    say(f"self-edits: {len(records)} given for {len(docs)} documents ({config.edits.file}); no teacher loaded")
    return records


def units(docs: list[Document], plan: AdaptPlan | None) -> list[tuple[Document, Document]]:
    """(document, passage) pairs the teacher writes for: a document that fits is its own passage, keeping its id."""
    out = []
    for doc in docs:
        p = plan.plans.get(doc.id) if plan is not None else None
        out += [(doc, passage) for passage in p.passages] if p is not None and p.split else [(doc, doc)]
    return out


def _unit_key(rec: dict) -> str:
    return rec.get("passage", rec["document"])  # records of unsplit documents (and older runs) have no "passage"


def write_self_edits(config: AdaptConfig, docs: list[Document], path: Path, *, engine=None, progress=True,
                     plan: AdaptPlan | None = None, teacher=None) -> list[dict]:
    """Sample k self-edits per passage, appending each finished passage's lines; resumes from what is there.

    `teacher`: a callable giving an already open (backend, adapter_off), for a caller that samples more than
    self-edits from one loaded teacher; called only when something is left to sample."""
    k = config.teacher.generation.num_samples
    done = complete_groups(path, _unit_key, k)
    pairs = units(docs, plan)
    todo = [(d, p) for d, p in pairs if p.id not in done]
    if len(todo) < len(pairs):
        say(f"self-edits: those of {len(pairs) - len(todo)} of {len(pairs)} passages reused from {path}"
            + (f"; {len(todo)} to write" if todo else "; the teacher is not loaded"))
    if todo:
        prompts = dict(zip([p.id for _, p in todo], knowledge.teacher_prompts([p for _, p in todo], config.self_edit)))
        from contextlib import nullcontext

        opened = nullcontext(teacher()) if teacher is not None else teacher_backend(config, engine)
        with opened as (backend, adapter_off):
            for parent, doc in progress_bar(todo, desc="teacher: writing self-edits", enabled=progress):
                seed = context_seed(config.seed, "teacher", doc.id)
                with adapter_off():
                    (samples,) = backend.sample([prompts[doc.id]], config.teacher.generation, [seed])
                lines = [
                    {
                        "document": parent.id,
                        **({"passage": doc.id} if doc is not parent else {}),
                        "sample": i,
                        "seed": seed,
                        "prompt": prompts[doc.id],
                        "self_edit": s.text,
                        "num_tokens": s.num_tokens,
                        "finished": s.finished,
                        **_training_texts(doc, s.text, config),
                    }
                    for i, s in enumerate(samples)
                ]
                for line in lines:
                    append_jsonl(path, line)
                done[doc.id] = lines
    return [rec for _, p in units(docs, plan) for rec in done[p.id]]


def adapter_name(index: int, doc_id: str) -> str:
    """The folder name of a per-document adapter: `adapters/<index>_<safe id>/`."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", doc_id).strip("._") or "doc"
    return f"{index:04d}_{safe[:60]}"


def _adapter_names(docs: list[Document]) -> dict[str, str]:
    return {d.id: adapter_name(i, d.id) for i, d in enumerate(docs)}


def _stats(stats) -> dict:
    return {"steps": stats.steps, "tokens": stats.tokens, "seconds": round(stats.seconds, 3),
            "final_loss": stats.final_loss}


def _report(config, docs, edits, before, after, train_stats, timings) -> dict:
    before_by = defaultdict(list)
    after_by = defaultdict(list)
    for r in before:
        before_by[r.document].append(r)
    for r in after:
        after_by[r.document].append(r)
    b, a = knowledge.summarize(before), knowledge.summarize(after)
    gain = None
    if b["questions"]:
        gain = {k: a[k] - b[k] for k in b if k != "questions" and b[k] is not None}
    return {
        "task": "knowledge",
        "teacher": None if config.edits.file else config.teacher.model.path,
        "edits": config.edits.file,
        "student": config.student.model.path,
        "mode": config.mode,
        "metric": config.student.eval.metric,
        "documents": len(docs),
        "self_edits": len(edits),
        "training_sequences": sum(s["sequences"] for s in train_stats),
        "before": b,
        "after": a,
        "gain": gain,
        "adapter": "adapter" if config.mode == "joint" else "adapters",
        "per_document": [
            {
                "id": d.id,
                "title": d.title,
                "before": knowledge.summarize(before_by[d.id]),
                "after": knowledge.summarize(after_by[d.id]),
            }
            for d in docs
        ],
        "questions": [
            {"document": x.document, "question": x.question, "answers": x.answers, "before": x.prediction,
             "after": y.prediction, "score_before": x.score, "score_after": y.score}
            for x, y in zip(before, after)
        ],
        "training": train_stats,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
