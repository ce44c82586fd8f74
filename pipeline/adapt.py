"""`adapt_student`: the teacher writes self-edits for the user's documents, the student absorbs them.

A recipe over library modules, read top to bottom in `adapt_student`: open the run folder (`pipeline.runfolder`),
plan the passages (`pipeline.plan`), write the self-edits (`pipeline.self_edits`), absorb them (`pipeline.absorb`:
joint, sharded or per document), evaluate before and after, report.

Output folder:
    config.yaml         the resolved config (a rerun with another config is refused unless forced)
    .lock               held while a run writes the folder: a second run on it exits naming the first
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

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from core.config import EvalSettings
from core.errors import UserError
from core.models import check_model_reference
from core.progress import say
from core.rundir import RunDir, atomic_write_json
from pipeline import self_edits
from pipeline.absorb import absorb_joint, absorb_per_document, absorb_sharded, adapter_names, is_sharded
from pipeline.documents import Document, load_documents, load_questions
from pipeline.plan import AdaptPlan, estimate, plan_adaptation
from pipeline.runfolder import open_run
from pipeline.sampling import Resident, shares_model
from pipeline.self_edits import TrainingTexts, sequences_over_cap, training_sequences
from pipeline.settings import AdaptConfig
from pipeline.tasks import knowledge

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
    knowledge.teacher_prompts(docs[:1], config.self_edit)  # validates the template
    if config.student.eval.metric == "llm_judge" and not config.student.eval.judge_model:
        raise UserError("student.eval.metric is llm_judge but student.eval.judge_model is not set")
    dist = config.student.distributed
    if dist.deepspeed or dist.nproc > 1:
        if config.mode != "joint":
            raise UserError("sharded training (student.distributed) trains one adapter: it needs mode=joint")
        from student.distributed import refuse_unsupported_objective

        refuse_unsupported_objective(config.student.train)  # said before the teacher writes anything
        from core.launch import load_deepspeed_config

        load_deepspeed_config(dist.deepspeed)  # a missing or malformed file fails here, before any work
    if config.merge and config.mode != "joint":
        raise UserError("merge=true writes one merged model and needs mode=joint")
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


def adapt_student(config: AdaptConfig, *, force: bool = False, progress: bool = True, wait: bool = False) -> dict:
    """Run (or resume) an adaptation and return its report. `wait`: if another run writes the output folder, wait
    for it to end instead of refusing."""
    if config.task == "arc":
        from pipeline.tasks.arc.adapt import adapt_arc

        check_executor(config)
        return adapt_arc(config, force=force, progress=progress, wait=wait)
    if config.dry_run:
        return dry_run(config)
    docs, given = prepare(config)
    plan = plan_run(config, docs, given)
    models = {"student": config.student.model, "teacher": config.teacher.model if given is None else None}
    # Where the documents are absorbed does not change what they give: a run may resume on another executor.
    report = REPORT if not changed_since_finished(config, docs, plan, force) else None
    with open_run(config.output, config, force=force, wait=wait, ignore=("executor",), report=report,
                  models=models) as opened:
        if opened.finished is not None:
            return opened.finished
        run, timings, student = opened.dir, {}, Resident(config.student)
        edits = write_edits(config, docs, given, plan, run, student, progress, timings)
        training = training_texts(config, docs, edits, plan)
        if is_sharded(config.student):
            outcome = absorb_sharded_step(config, docs, training, run, student, timings)
        elif config.mode == "joint":
            outcome = absorb_joint_step(config, docs, training, run, student, progress, timings)
        else:
            outcome = absorb_per_document_step(config, docs, training, run, student, progress, timings)
        report = make_report(config, docs, edits, plan, training, outcome, timings)
        return finish(run, report, outcome.failed)


def changed_since_finished(config: AdaptConfig, docs: list[Document], plan: AdaptPlan | None, force: bool) -> int:
    """A finished run whose self-edits were written for other document text, another prompt or another teacher (or
    edits file) is not reused as finished: the resume redoes what changed (`pipeline.stamps`). Returns how many
    passages changed (0: nothing to redo, or no finished run)."""
    out = Path(config.output).expanduser()
    if force or not (out / REPORT).is_file() or not (out / EDITS).is_file():
        return 0
    changed = self_edits.changed_since(out / EDITS, docs, plan, teacher=config.teacher, self_edit=config.self_edit,
                                       edits_file=config.edits.file)
    if changed:
        say(f"{out} is complete, but the self-edits of {changed} passage(s) were written for another text, prompt "
            "or teacher: they are redone and the student trained again")
    return changed


# ---------------------------------------------------------------------------------------------------- the steps
def write_edits(config: AdaptConfig, docs: list[Document], given: dict[str, list[str]] | None,
                plan: AdaptPlan | None, run: RunDir, student: Resident, progress: bool,
                timings: dict) -> list[dict]:
    """The self-edit records: the given ones, or the teacher's (resumed from what the folder holds)."""
    t0 = time.perf_counter()
    if given is not None:
        edits = self_edits.write_given_edits(docs, given, run / EDITS, self_edit=config.self_edit,
                                             edits=config.edits)
    else:
        engine = student.load() if shares_model(config.teacher, config.student) else None
        edits = self_edits.write_self_edits(docs, run / EDITS, teacher=config.teacher, self_edit=config.self_edit,
                                            seed=config.seed, plan=plan, engine=engine, progress=progress)
    timings["teacher_seconds"] = time.perf_counter() - t0
    return edits


def training_texts(config: AdaptConfig, docs: list[Document], edits: list[dict],
                   plan: AdaptPlan | None) -> TrainingTexts:
    """Each document's training sequences (and the passage each was written for)."""
    return training_sequences(docs, edits, plan, self_edit=config.self_edit,
                              max_length=config.student.train.max_length,
                              num_samples=config.teacher.generation.num_samples, edits_file=config.edits.file)


@dataclass
class Outcome:
    """What an absorption step leaves for the report."""

    reported: list[Document]  # the documents the report covers (one that failed every try is left out)
    before: list
    after: list
    open_book: list | None
    training: list[dict]
    failed: list[dict] = field(default_factory=list)
    metric: str = ""  # the grader's metric, resolved for the student (never "auto")


def load_and_evaluate(student: Resident, docs: list[Document], ev: EvalSettings, timings: dict):
    """The student loaded (if it is not yet) and scored before adaptation: (engine, grader, before, open_book)."""
    t0 = time.perf_counter()
    engine = student.load()
    timings["student_load_seconds"] = time.perf_counter() - t0
    grader = knowledge.Grader(ev, engine=engine)
    engine.reset()
    t0 = time.perf_counter()
    before = knowledge.evaluate(engine, docs, ev, grader)
    timings["eval_before_seconds"] = time.perf_counter() - t0
    open_book = knowledge.evaluate(engine, docs, ev, grader, open_book=True) if ev.open_book else None
    return engine, grader, before, open_book


def evaluate_after(engine, docs: list[Document], ev: EvalSettings, grader, timings: dict) -> list:
    t0 = time.perf_counter()
    after = knowledge.evaluate(engine, docs, ev, grader)
    timings["eval_after_seconds"] = time.perf_counter() - t0
    return after


def absorb_sharded_step(config: AdaptConfig, docs: list[Document], training: TrainingTexts, run: RunDir,
                        student: Resident, timings: dict) -> Outcome:
    """Train first, in launched processes, while this process holds no copy of the student; then load the student
    with the adapter and evaluate (merged/, with merge=true, is written by rank 0 of the job)."""
    from core.adapter_base import write_record

    student.release()
    t0 = time.perf_counter()
    texts, _ = training.joined(docs)
    stats = absorb_sharded(texts, run.path, student=config.student, seed=config.seed, merge=config.merge)
    timings["train_seconds"] = time.perf_counter() - t0
    engine, grader, before, open_book = load_and_evaluate(student, docs, config.student.eval, timings)
    write_record(run / "adapter", engine.base)  # written by the training job, which records no base
    engine.load_adapter(run / "adapter")
    after = evaluate_after(engine, docs, config.student.eval, grader, timings)
    return Outcome(docs, before, after, open_book, [stats], metric=grader.metric)


def absorb_joint_step(config: AdaptConfig, docs: list[Document], training: TrainingTexts, run: RunDir,
                      student: Resident, progress: bool, timings: dict) -> Outcome:
    """Every document into one adapter in this process (adapter/; merged/ with merge=true)."""
    engine, grader, before, open_book = load_and_evaluate(student, docs, config.student.eval, timings)
    t0 = time.perf_counter()
    texts, contexts = training.joined(docs)
    say(f"student: training one adapter on {len(texts)} sequences from {len(docs)} documents")
    stats = absorb_joint(engine, texts, run / "adapter", train=config.student.train, seed=config.seed,
                         checkpoint_dir=run / ".work" / "train_checkpoint", contexts=contexts, progress=progress)
    timings["train_seconds"] = time.perf_counter() - t0
    if config.merge:
        from core.adapters import merge_adapter

        m = config.student.model
        merge_adapter(m.path, run / "adapter", run / "merged", dtype=m.dtype, trust_remote_code=m.trust_remote_code,
                      internal=True)
    after = evaluate_after(engine, docs, config.student.eval, grader, timings)
    return Outcome(docs, before, after, open_book, [stats], metric=grader.metric)


def absorb_per_document_step(config: AdaptConfig, docs: list[Document], training: TrainingTexts, run: RunDir,
                             student: Resident, progress: bool, timings: dict) -> Outcome:
    """One adapter per document on the configured executor; each document's questions answered by its own."""
    engine, grader, before, open_book = load_and_evaluate(student, docs, config.student.eval, timings)
    t0 = time.perf_counter()
    if config.executor.kind != "local":
        engine = None  # the workers load their own students: the devices are theirs
        student.release()
    done, failed = absorb_per_document(docs, training.texts, run.path, student=config.student,
                                       executor=config.executor, seed=config.seed, records=PER_DOCUMENT,
                                       failures=FAILURES, contexts=training.contexts, engine=engine, grader=grader,
                                       progress=progress)
    # The report covers the documents absorbed; one that failed every try is left out, never scored as wrong.
    reported = [d for d in docs if d.id in done]
    after = [knowledge.QuestionResult(**q) for d in reported for q in done[d.id]["after"]]
    before = [r for r in before if r.document in done]
    timings["train_and_eval_seconds"] = time.perf_counter() - t0
    return Outcome(reported, before, after, open_book, [done[d.id]["training"] for d in reported], failed,
                   metric=grader.metric)


def make_report(config: AdaptConfig, docs: list[Document], edits: list[dict], plan: AdaptPlan | None,
                training: TrainingTexts, outcome: Outcome, timings: dict) -> dict:
    """The run's report: scores before and after, per document and per question, training, timings."""
    o = outcome
    report = _report(config, o.reported, edits, o.before, o.after, o.training, timings, o.metric)
    if config.mode == "per_document":
        # Folder names follow the order of all documents, failed ones included: `ask --run` reads them here.
        names = adapter_names(docs)
        for entry in report["per_document"]:
            entry["adapter"] = f"adapters/{names[entry['id']]}"
    if o.open_book is not None:
        from pipeline.tasks.ceiling import ceiling_report

        kept = {d.id for d in o.reported}
        open_book = [r for r in o.open_book if r.document in kept]
        report["open_book"] = knowledge.summarize(open_book)
        report["ceiling"] = ceiling_report(o.after, open_book)
    if plan is not None:
        report["passages"] = plan.summary()
        report["sequences_split"] = training.split
    report["sequences_over_cap"] = sequences_over_cap(edits)
    if o.failed:
        report["failed"] = [f["document"] for f in o.failed]
    return report


def finish(run: RunDir, report: dict, failed: list[dict]) -> dict:
    """The report written (the run's end mark); documents that failed every try named, the exit saying so."""
    atomic_write_json(run / REPORT, report)
    if failed:
        from core.errors import ItemsFailed

        say(f"student: {len(failed)} document(s) failed every try and are left out of the report; a rerun of the "
            "same command tries them again (and only them)")
        raise ItemsFailed(failed, str(run / FAILURES))
    return report


# ------------------------------------------------------------------------- the store's entry points (until it moves)
def _report(config, docs, edits, before, after, train_stats, timings, metric: str) -> dict:
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
        "metric": metric,  # resolved: what "auto" became for this student
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
