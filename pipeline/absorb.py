"""The student absorbs training texts into LoRA adapters: one adapter for all (joint), one adapter trained by
several launched processes (sharded), or one adapter per document behind an executor (per document).

Each takes the student it trains (or its settings, for launched processes and workers), the texts, and the
training settings it reads; none knows which command called it.

Per document, each document is one work item keyed by its id: a worker trains its adapter from the document's
seed, answers its questions and returns the record with the adapter's tensors; only the calling process writes
files: the adapter under adapters/<name>/ as its result arrives, then the document's line in the records file
(the resume point), so a recorded document always has its adapter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from core.config import ExecutorSettings, StudentSettings, TrainSettings
from core.progress import progress_bar, say
from core.rundir import append_jsonl, read_jsonl, repair_jsonl
from core.seeds import context_seed
from pipeline.documents import Document
from pipeline.tasks import knowledge
from pipeline.work import Scorer, WorkItem, record_failure


def train_stats(stats) -> dict:
    """The fields of a `TrainStats` a report keeps."""
    return {"steps": stats.steps, "tokens": stats.tokens, "seconds": round(stats.seconds, 3),
            "final_loss": stats.final_loss}


# ------------------------------------------------------------------------------------------------------ joint
def absorb_joint(engine, texts: list[str], adapter_dir: Path, *, train: TrainSettings, seed: int,
                 checkpoint_dir: Path, contexts: list[str] | None = None, progress: bool = True) -> dict:
    """One adapter on all `texts`, saved to `adapter_dir`; returns its training stats.

    A seeded start: the adapter depends on the texts and the seed only, not on what ran before in this process (a
    teacher sampling here, or nothing at all on a resume). Training saves a checkpoint under `checkpoint_dir` now
    and then (`train.checkpoint_minutes`, `train.checkpoint_steps`), from which a rerun continues to the same
    result. `contexts[i]`: the passage `texts[i]` was written for, read by train.objective=context_distill."""
    from student.checkpoint import TrainCheckpoint

    engine.reset(seed=seed)
    ckpt = TrainCheckpoint(checkpoint_dir, every_seconds=60 * train.checkpoint_minutes,
                           every_steps=train.checkpoint_steps)
    stats = engine.train_texts(texts, train, seed=seed, progress=progress, checkpoint=ckpt,
                               contexts=contexts if train.objective == "context_distill" else None)
    if ckpt.resumed_from:
        say(f"student: resumed training from its checkpoint at step {ckpt.resumed_from}")
    engine.save_adapter(adapter_dir)
    return {"document": None, "sequences": len(texts), **train_stats(stats)}


# ---------------------------------------------------------------------------------------------------- sharded
def absorb_sharded(texts: list[str], out: Path, *, student: StudentSettings, seed: int,
                   merge: bool = False) -> dict:
    """One adapter on `texts` trained by `student.distributed.nproc` launched processes (DeepSpeed ZeRO when
    configured), working in out/.sharded; its adapter/ (and with `merge`, merged/) moved to `out`. Returns its
    training stats. The calling process should hold no copy of the student meanwhile."""
    from core.launch import launch_sharded
    from core.models import resolve_model_path
    from student.distributed import ShardedSpec

    dist = student.distributed
    work = out / ".sharded"
    m = student.model
    spec = ShardedSpec(
        # A GGUF student is converted here, once, not by every rank.
        model_path=resolve_model_path(m.path, dtype=m.dtype, device=m.device),
        output_dir=str(work),
        texts=texts,
        lora=dataclasses.asdict(student.lora),
        train={**{("lr" if k == "learning_rate" else k): v for k, v in dataclasses.asdict(student.train).items()},
               "seed": seed},
        deepspeed_config=dist.deepspeed,
        merge=merge,
    )
    say(f"student: training one adapter on {len(texts)} sequences, {dist.nproc} processes ({dist.launcher}"
        + (f", DeepSpeed {dist.deepspeed}" if dist.deepspeed else "") + ")")
    result = launch_sharded(spec, dist.nproc, dist.launcher)
    for name in ("adapter", "merged"):
        if (work / name).exists():
            if (out / name).exists():
                shutil.rmtree(out / name)
            os.replace(work / name, out / name)
    return {"document": None, "sequences": len(texts), "steps": result.get("steps"),
            "world_size": result.get("world_size"), "zero_stage": result.get("zero_stage"),
            "final_loss": (result.get("losses") or [None])[-1]}


def is_sharded(student: StudentSettings) -> bool:
    """Whether the student's training runs in launched processes (student.distributed)."""
    return bool(student.distributed.deepspeed or student.distributed.nproc > 1)


# ----------------------------------------------------------------------------------------------- per document
def adapter_name(index: int, doc_id: str) -> str:
    """The folder name of a per-document adapter: `adapters/<index>_<safe id>/`."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", doc_id).strip("._") or "doc"
    return f"{index:04d}_{safe[:60]}"


def adapter_names(docs: list[Document]) -> dict[str, str]:
    """Document id -> its adapter's folder name; names follow the order of all documents, failed ones included."""
    return {d.id: adapter_name(i, d.id) for i, d in enumerate(docs)}


def absorb_per_document(docs: list[Document], texts: dict[str, list[str]], out: Path, *, student: StudentSettings,
                        executor: ExecutorSettings, seed: int, records: str, failures: str,
                        contexts: dict[str, list[str]] | None = None, engine=None, grader=None,
                        progress: bool = True) -> tuple[dict[str, dict], list[dict]]:
    """One adapter per document, each document one work item (keyed by its id) on the `executor`.

    Adapters go to out/adapters/<name>/, each document's record to out/`records` after its adapter, failures to
    out/`failures`; a rerun skips every document recorded with the same training texts and settings and its adapter
    in place. `engine`: the student this process holds, which the local executor trains on. Returns the records of
    every absorbed document (earlier runs' too) by id, and this run's failures."""
    from pipeline.executor import make_executor

    names = adapter_names(docs)
    path = out / records
    distill = student.train.objective == "context_distill"
    prints = {d.id: _fingerprint(student, seed, d, texts[d.id], contexts[d.id] if distill else None) for d in docs}
    done = _absorbed(path, prints, out, names)
    items = [WorkItem(d.id, d, {"document": d.id, "texts": texts[d.id],
                                **({"contexts": contexts[d.id]} if distill else {})}, [context_seed(seed, d.id)])
             for d in docs if d.id not in done]
    if done:
        say(f"student: {len(done)} of {len(docs)} documents already absorbed ({path}); {len(items)} to go")
    task = AbsorbTask(student.train, student.eval, grader)
    runner = make_executor(executor, task, student.lora, engine=engine)
    writer = AdapterWriter(student.model, student.lora)
    failed: list[dict] = []
    try:
        results = runner.run(student.model, items)
        for item, rec, failure in progress_bar(results, desc="student: absorbing", enabled=progress and bool(items),
                                               total=len(items)):
            if failure is not None:
                failed.append(record_failure(out / failures, failure, f"document {item.key}", document=item.key))
                continue
            writer.save(rec.pop("adapter"), out / "adapters" / names[item.key])
            rec["fingerprint"] = prints[item.key]
            append_jsonl(path, rec)  # after the adapter: a recorded document always has its adapter
            done[item.key] = rec
    finally:
        runner.close()
    return done, failed


def _absorbed(path: Path, prints: dict[str, str], out: Path, names: dict[str, str]) -> dict[str, dict]:
    """The recorded documents whose fingerprint still holds and whose adapter is in place."""
    repair_jsonl(path)
    done: dict[str, dict] = {}
    for rec in read_jsonl(path):
        key = rec.get("document")
        if key in prints and rec.get("fingerprint") == prints[key] and \
                (out / "adapters" / names[key] / "adapter_model.safetensors").exists():
            done[key] = rec
    return done


def _fingerprint(student: StudentSettings, seed: int, doc: Document, texts: list[str],
                 contexts: list[str] | None = None) -> str:
    """What a document's adapter and answers depend on: a recorded result with another fingerprint is redone."""
    asdict = dataclasses.asdict
    data = {"texts": texts, "seed": context_seed(seed, doc.id), "train": asdict(student.train),
            "eval": asdict(student.eval), "lora": asdict(student.lora),
            "student": asdict(student.model), "questions": [asdict(q) for q in doc.questions]}
    if contexts is not None:  # context_distill only: nll's fingerprints stay those of earlier runs
        data["contexts"] = contexts
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
        stats = engine.train_texts(texts, self.task.train, seed=seed, contexts=item.sample.get("contexts"))
        results = knowledge.evaluate(engine, [doc], self.task.eval, self.task.grader_for(engine))
        return {"document": doc.id, "seed": seed,
                "training": {"document": doc.id, "sequences": len(texts), **train_stats(stats)},
                "after": [dataclasses.asdict(r) for r in results], "adapter": engine.adapter_state(),
                "timings": {"seconds": round(time.perf_counter() - t0, 3)}}


class AbsorbTask:
    """Per-document absorption as an executor task (`scorer_class`: see pipeline/work.py)."""

    name = "absorb"
    scorer_class = DocumentScorer

    def __init__(self, train, eval_settings, grader=None):
        self.train = train
        self.eval = eval_settings
        self._grader = grader

    def grader_for(self, engine):
        """The grader of `engine`'s answers (built once per process; metric "auto" resolved for that student)."""
        if self._grader is None:
            self._grader = knowledge.Grader(self.eval, engine=engine)
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
        from core.adapter_base import write_record
        from core.adapters import verify_adapter
        from core.rundir import atomic_dir

        with atomic_dir(out_dir, internal=True) as tmp:
            self.skeleton().save_pretrained(tmp, safe_serialization=True, state_dict=state)
            verify_adapter(tmp, expected=state)
            write_record(tmp, self._base)
        return Path(out_dir)
