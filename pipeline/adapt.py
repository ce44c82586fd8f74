"""`adapt_student`: the teacher writes self-edits for the user's documents, the student absorbs them.

Output folder:
    config.yaml         the resolved config (a rerun with another config is refused unless forced)
    self_edits.jsonl    one line per self-edit, appended per document as the teacher finishes it (resume point)
    adapter/            PEFT adapter in safetensors (mode=joint), or adapters/<document id>/ (mode=per_document)
    merged/             with merge=true: the student with the adapter folded in
    report.json         scores before and after, per document and per question, timings
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

from core.config import AdaptConfig
from pipeline.documents import Document, load_documents, load_questions
from core.errors import UserError
from core.models import check_model_reference
from core.progress import progress_bar, say
from core.seeds import context_seed
from core.rundir import (
    RunDir,
    append_jsonl,
    atomic_write_json,
    complete_groups,
    finished_report,
    removed_on_user_error,
)
from pipeline.sampling import free_memory, teacher_backend
from pipeline.tasks import knowledge

EDITS = "self_edits.jsonl"
REPORT = "report.json"


def prepare(config: AdaptConfig) -> list[Document]:
    """Everything that can be wrong with the input is found here, before the output folder is touched."""
    if not config.docs:
        raise UserError("no documents given (--docs PATH: a file, a folder, .json or .jsonl)")
    docs = load_documents(config.docs, limit=config.limit)
    if config.questions:
        docs = load_questions(config.questions, docs)
    check_model_reference(config.teacher.model.path, "teacher", allow_adapter=True)
    check_model_reference(config.student.model.path, "student")
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
    return docs


def adapt_student(config: AdaptConfig, *, force: bool = False, progress: bool = True) -> dict:
    """Run (or resume) an adaptation and return its report."""
    if config.task == "arc":
        from pipeline.tasks.arc.adapt import adapt_arc

        return adapt_arc(config, force=force, progress=progress)
    docs = prepare(config)
    run = RunDir(config.output)
    run.check_writable()
    with removed_on_user_error(run.path):
        run.start(config, force=force)
        report = finished_report(run, REPORT, force)
        return report if report is not None else _run(config, docs, run, progress)


def _run(config: AdaptConfig, docs: list[Document], run: RunDir, progress: bool) -> dict:
    from student.engine import StudentEngine

    timings: dict[str, float] = {}
    same_model = config.teacher.model == config.student.model and config.teacher.backend == "transformers"
    engine = None
    t0 = time.perf_counter()
    if same_model:
        engine = StudentEngine(config.student.model, config.student.lora)
    edits = write_self_edits(config, docs, run / EDITS, engine=engine, progress=progress)
    timings["teacher_seconds"] = time.perf_counter() - t0

    texts_by_doc = {d.id: [] for d in docs}
    for rec in edits:
        texts_by_doc[rec["document"]].extend(rec["training_texts"])
    for doc in docs:
        if not texts_by_doc[doc.id]:
            raise UserError(
                f"the teacher's self-edits for document {doc.id!r} yield no training text "
                f"(all {config.teacher.generation.num_samples} samples empty after splitting); "
                "try a larger teacher.generation.max_new_tokens or another self_edit.prompt"
            )
        if config.self_edit.include_passage:
            texts_by_doc[doc.id].append(knowledge.with_title(doc, doc.text, config.self_edit))

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
        texts = [t for d in docs for t in texts_by_doc[d.id]]
        say(f"student: training one adapter on {len(texts)} sequences from {len(docs)} documents")
        engine.reset()
        stats = engine.train_texts(texts, tr, seed=config.seed, progress=progress)
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
            engine.reset()
            stats = engine.train_texts(texts_by_doc[doc.id], tr, seed=context_seed(config.seed, doc.id))
            train_stats.append({"document": doc.id, "sequences": len(texts_by_doc[doc.id]), **_stats(stats)})
            engine.save_adapter(run / "adapters" / names[doc.id])
            after += knowledge.evaluate(engine, [doc], ev, grader)
        timings["train_and_eval_seconds"] = time.perf_counter() - t0

    report = _report(config, docs, edits, before, after, train_stats, timings)
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
    spec = ShardedSpec(
        model_path=config.student.model.path,
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


def write_self_edits(config: AdaptConfig, docs: list[Document], path: Path, *, engine=None, progress=True) -> list[dict]:
    """Sample k self-edits per document, appending each finished document's lines; resumes from what is there."""
    k = config.teacher.generation.num_samples
    done = complete_groups(path, "document", k)
    todo = [d for d in docs if d.id not in done]
    if todo:
        prompts = dict(zip([d.id for d in todo], knowledge.teacher_prompts(todo, config.self_edit)))
        with teacher_backend(config, engine) as (backend, adapter_off):
            for doc in progress_bar(todo, desc="teacher: writing self-edits", enabled=progress):
                seed = context_seed(config.seed, "teacher", doc.id)
                with adapter_off():
                    (samples,) = backend.sample([prompts[doc.id]], config.teacher.generation, [seed])
                lines = [
                    {
                        "document": doc.id,
                        "sample": i,
                        "seed": seed,
                        "prompt": prompts[doc.id],
                        "self_edit": s.text,
                        "num_tokens": s.num_tokens,
                        "finished": s.finished,
                        "training_texts": [
                            knowledge.with_title(doc, t, config.self_edit)
                            for t in knowledge.split_self_edit(s.text, config.self_edit)
                        ],
                    }
                    for i, s in enumerate(samples)
                ]
                for line in lines:
                    append_jsonl(path, line)
                done[doc.id] = lines
    return [rec for d in docs for rec in done[d.id]]


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
        "teacher": config.teacher.model.path,
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
