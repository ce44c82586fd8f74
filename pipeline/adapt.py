"""`adapt_student`: the teacher writes self-edits for the user's documents, the student absorbs them.

Output folder:
    config.yaml         the resolved config (a rerun with another config is refused unless forced)
    self_edits.jsonl    one line per self-edit, appended per document as the teacher finishes it (resume point)
    adapter/            PEFT adapter in safetensors (mode=joint), or adapters/<document id>/ (mode=per_document)
    merged/             with merge=true: the student with the adapter folded in
    report.json         scores before and after, per document and per question, timings
"""

from __future__ import annotations

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
    removed_on_user_error,
)
from pipeline.plan import MARGIN, AdaptPlan, estimate, fit_sequences, plan_adaptation
from pipeline.sampling import free_memory, teacher_backend
from pipeline.tasks import knowledge

EDITS = "self_edits.jsonl"
REPORT = "report.json"


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
    return docs, given


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

        return adapt_arc(config, force=force, progress=progress)
    if config.dry_run:
        return dry_run(config)
    docs, given = prepare(config)
    plan = plan_run(config, docs, given)
    run = RunDir(config.output)
    run.check_writable()
    with removed_on_user_error(run.path):
        run.start(config, force=force)
        report = finished_report(run, REPORT, force)
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
                "try a larger teacher.generation.max_new_tokens or another self_edit.prompt"
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

    after: list = []
    train_stats = []
    t0 = time.perf_counter()
    if sharded:
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
            merge_adapter(m.path, run / "adapter", run / "merged", dtype=m.dtype, trust_remote_code=m.trust_remote_code)
        t1 = time.perf_counter()
        after = knowledge.evaluate(engine, docs, ev, grader)
        timings["eval_after_seconds"] = time.perf_counter() - t1
    else:
        names = _adapter_names(docs)
        for doc in progress_bar(docs, desc="student: absorbing", enabled=progress):
            seed = context_seed(config.seed, doc.id)
            engine.reset(seed=seed)
            stats = engine.train_texts(texts_by_doc[doc.id], tr, seed=seed)
            train_stats.append({"document": doc.id, "sequences": len(texts_by_doc[doc.id]), **_stats(stats)})
            engine.save_adapter(run / "adapters" / names[doc.id])
            after += knowledge.evaluate(engine, [doc], ev, grader)
        timings["train_and_eval_seconds"] = time.perf_counter() - t0

    report = _report(config, docs, edits, before, after, train_stats, timings)
    if plan is not None:
        report["passages"] = plan.summary()
        report["sequences_split"] = sequences_split
    report["sequences_over_cap"] = sum((r.get("split") or {}).get("dropped_over_cap", 0) for r in edits)
    atomic_write_json(run / REPORT, report)
    return report


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
                     plan: AdaptPlan | None = None) -> list[dict]:
    """Sample k self-edits per passage, appending each finished passage's lines; resumes from what is there."""
    k = config.teacher.generation.num_samples
    done = complete_groups(path, _unit_key, k)
    todo = [(d, p) for d, p in units(docs, plan) if p.id not in done]
    if todo:
        prompts = dict(zip([p.id for _, p in todo], knowledge.teacher_prompts([p for _, p in todo], config.self_edit)))
        with teacher_backend(config, engine) as (backend, adapter_off):
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


def _adapter_names(docs: list[Document]) -> dict[str, str]:
    names = {}
    for i, d in enumerate(docs):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", d.id).strip("._") or "doc"
        names[d.id] = f"{i:04d}_{safe[:60]}"
    return names


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
