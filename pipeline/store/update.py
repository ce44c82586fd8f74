"""`seal-tt update`: absorb what is new in a folder of documents into a knowledge store, measure what was kept.

One update, meant to run from cron or a scheduler every few hours:

1. take the store's lock (a second run refuses, or waits with --wait) and check the store;
2. diff the folder against the store by content hash: new documents, changed ones (absorbed again; the old version's
   self-edits leave replay and joint, a library retires its adapter once nothing current is in it, and `merge` says
   that its weights keep the old version), unchanged ones (skipped), ones the gate rejected before (skipped until
   they change);
3. the teacher writes self-edits for the new versions (or `--edits` gives them) and probe questions for those that
   have none; all of it lands in `.pending/` as it is written, so a crash loses at most the document in flight;
4. the student is loaded with the store applied, scores the probes of the new documents (base and before) and of
   a budget of earlier ones (before), trains the update by the strategy, applies it, scores again (after);
5. the gate (when set) rejects or scales down an update that drops the earlier probes by more than its budget,
   naming the probes that broke;
6. the drift probe (KL to the base on fixed text) is measured, and the update is committed: its folder moves into
   `updates/`, then `state.json` is replaced in one rename. A rerun after a crash at any point gives the same store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from core.config import AdaptConfig, StoreConfig, STORE_FIXED, check_ranges, to_dict
from core.errors import UserError
from core.progress import say
from core.rundir import append_jsonl, atomic_write_json, atomic_write_text, complete_groups
from core.seeds import context_seed
from pipeline.documents import Document, Question, load_documents, load_questions
from pipeline.store.layout import Store, StoreBusy, active_documents, now
from pipeline.store.metrics import forgetting_metrics, kl_bits_per_token
from pipeline.store.probes import sample_earlier, teacher_probes
from pipeline.store.student import STACKED, StoreStudent, routing_text, scaled

EDITS = "edits.jsonl"
PROBES = "probes.jsonl"


def content_hash(doc: Document) -> str:
    return hashlib.sha256(json.dumps([doc.title, doc.text], ensure_ascii=False).encode()).hexdigest()


def version_key(doc: Document, digest: str) -> str:
    return f"{doc.id}@{digest[:12]}"


def fixed_settings(config: StoreConfig) -> dict:
    data = to_dict(config)
    out = {}
    for dotted in STORE_FIXED:
        node = data
        for part in dotted.split("."):
            node = node[part]
        out[dotted] = node
    return out


def adapt_view(config: StoreConfig, pending: Path) -> AdaptConfig:
    """The adapt-student settings an update's self-edits are written with (same teacher path, same splitting)."""
    return AdaptConfig(docs=list(config.docs), output=str(pending), mode="joint", seed=config.seed,
                       teacher=config.teacher, student=config.student, self_edit=config.self_edit,
                       edits=config.edits, passages=config.passages)


# ------------------------------------------------------------------------------------------------- planning
def plan_update(config: StoreConfig, state: dict) -> dict:
    """What this update would absorb: {"new": [...], "changed": [...], "unchanged": [...], "rejected": [...],
    "missing": [...]} and the documents to absorb, in folder order."""
    if not config.docs:
        raise UserError("no documents given (--docs FOLDER: the folder the store keeps up to date)")
    docs = load_documents(config.docs)
    if config.questions:
        docs = load_questions(config.questions, docs)
    out = {"new": [], "changed": [], "unchanged": [], "rejected": [], "absorb": []}
    for doc in docs:
        digest = content_hash(doc)
        key = version_key(doc, digest)
        known = state["documents"].get(doc.id)
        if known and known["versions"][-1]["hash"] == digest:
            out["unchanged"].append(doc.id)
            continue
        if key in state["rejected"]:
            out["rejected"].append(doc.id)
            continue
        out["changed" if known else "new"].append(doc.id)
        out["absorb"].append((doc, digest, key))
    seen = {d.id for d in docs}
    out["missing"] = [i for i in state["documents"] if i not in seen]
    return out


# ------------------------------------------------------------------------------------------------ the update
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
            plan = plan_update(config, {"documents": {}, "rejected": {}})  # bad input fails before anything exists
            if not plan["absorb"]:
                raise UserError(f"no documents found in {', '.join(config.docs)}")
            store.create(fixed_settings(config))
            say(f"store: created {store.path} (strategy {config.strategy})")
        manifest = store.manifest()
        config = with_store_settings(config, manifest["settings"])
        _check_fixed(store, manifest, config)
        state = store.state()
        dropped = store.drop_uncommitted(state)
        if dropped:
            say(f"store: update {dropped[0]} was interrupted while committing; redoing it")
        plan = plan_update(config, state)
        _say_plan(plan)
        if not plan["absorb"]:
            shutil.rmtree(store.pending, ignore_errors=True)
            return {"nothing_new": True, "store": str(store.path), **{k: plan[k] for k in
                                                                     ("unchanged", "rejected", "missing")}}
        return _run_update(config, store, state, plan, progress)


def with_store_settings(config: StoreConfig, fixed: dict) -> StoreConfig:
    """The store's own settings wherever this update leaves one at its default, so that a scheduled update needs
    only `--store` and `--docs` (and the teacher): the student and strategy come from the store."""
    from core.config import load_config

    data, default = to_dict(config), fixed_settings(StoreConfig())
    mine = fixed_settings(config)
    for dotted, value in fixed.items():
        if dotted in mine and mine[dotted] == default[dotted] and value != default[dotted]:
            node = data
            parts = dotted.split(".")
            for part in parts[:-1]:
                node = node[part]
            node[parts[-1]] = value
    return load_config(StoreConfig, None, data)


def _check_fixed(store: Store, manifest: dict, config: StoreConfig) -> None:
    fixed = manifest["settings"]
    now_ = fixed_settings(config)
    diff = [k for k in fixed if fixed[k] != now_.get(k)]
    if diff:
        k = diff[0]
        raise UserError(f"store {store.path} was created with {k}={json.dumps(fixed[k])}, this update asks for "
                        f"{json.dumps(now_.get(k))}; a store keeps one student and one strategy (use another --store)")


def _say_plan(plan: dict) -> None:
    parts = [f"{len(plan[k])} {k}" for k in ("new", "changed", "unchanged") if plan[k]]
    say("store: documents " + (", ".join(parts) or "none"))
    if plan["rejected"]:
        say(f"store: {len(plan['rejected'])} documents the gate rejected before are skipped until they change: "
            + ", ".join(plan["rejected"][:5]))
    if plan["missing"]:
        say(f"store: {len(plan['missing'])} stored documents are no longer in the folder; the store keeps them")


def _run_update(config: StoreConfig, store: Store, state: dict, plan: dict, progress: bool) -> dict:
    number = (state["updates"][-1]["number"] + 1) if state["updates"] else 1
    pending = store.pending
    keys = [key for _, _, key in plan["absorb"]]
    job = {"number": number, "documents": keys}
    job_file = pending / "job.json"
    if job_file.is_file():
        if json.loads(job_file.read_text(encoding="utf-8")) == job:
            say(f"store: resuming update {number} from {pending}")
        else:
            say("store: the folder changed since the interrupted update; starting this one afresh")
            shutil.rmtree(pending)
    pending.mkdir(parents=True, exist_ok=True)
    atomic_write_json(job_file, job)
    timings: dict[str, float] = {}
    docs = [doc for doc, _, _ in plan["absorb"]]

    t0 = time.perf_counter()
    acfg = adapt_view(config, pending)
    with ExitStack() as stack:  # one teacher load for self-edits and probes, freed before the student loads
        opened: list = []

        def teacher():
            if not opened:
                from pipeline.sampling import teacher_backend

                opened.append(stack.enter_context(teacher_backend(config)))
            return opened[0]

        records, text_plan = _self_edits(config, acfg, docs, pending, progress, teacher)
        probes = _probes(config, docs, pending, teacher)
    timings["teacher_seconds"] = time.perf_counter() - t0

    from pipeline.adapt import training_texts_by_document

    texts_by_doc, split = training_texts_by_document(acfg, docs, records, text_plan)

    from student.engine import StudentEngine

    t0 = time.perf_counter()
    engine = StudentEngine(config.student.model, config.student.lora)
    student = StoreStudent(engine, config.strategy, config.student.eval)
    drift_ids = _drift_ids(engine, config)
    engine.reset(seed=0)
    with engine.adapter_disabled():
        base_logprobs = engine.next_token_logprobs(drift_ids)
    new_probes = [(key, q) for (doc, _, key) in plan["absorb"] for q in probes[doc.id]]
    base_scores = _items(new_probes, student.score(new_probes))  # nothing applied yet: the base model
    student.load(store, state)
    timings["load_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    active = active_documents(state)
    superseded = {state["documents"][doc.id]["versions"][-1]["key"] for doc, _, _ in plan["absorb"]
                  if doc.id in state["documents"]}
    earlier = [k for k in active if k not in superseded]
    sample = sample_earlier(earlier, config.probes.max_documents, context_seed(config.seed, "probes", number))
    earlier_probes = [(k, Question(p["question"], tuple(p["answers"])))
                      for k in sample for p in store.read_document(k)["probes"]]
    # The student has not changed since the last update's row was written: its cells are this update's "before".
    last_items = state["matrix"][-1]["items"] if state["matrix"] else {}
    unknown = [p for p in earlier_probes if p[0] not in last_items]
    before_items = {**{k: last_items[k] for k in sample if k in last_items}, **_items(unknown, student.score(unknown))}
    before_new = _items(new_probes, student.score(new_probes))
    timings["probe_before_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    seed = context_seed(config.seed, "update", number)
    texts, replayed = _training_set(config, store, state, texts_by_doc, docs, superseded, number)
    from student.checkpoint import TrainCheckpoint

    tr = config.student.train
    ckpt = TrainCheckpoint(pending / "train_checkpoint", every_seconds=60 * tr.checkpoint_minutes,
                           every_steps=tr.checkpoint_steps)
    say(f"store: update {number}: training on {len(texts)} sequences ({len(texts) - replayed} new"
        + (f", {replayed} replayed" if replayed else "") + f"), strategy {config.strategy}")
    current_weights = engine.base_weights() if config.strategy in STACKED else None
    engine.reset(seed=seed)
    stats = engine.train_texts(texts, tr, seed=seed, progress=progress, checkpoint=ckpt)
    trained = engine.adapter_state()
    timings["train_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if config.strategy == "library":  # the router sees the new documents through what this update staged
        student.library[number] = trained
        student.set_router(state, store, superseded=superseded, number=number,
                           staged={key: routing_text(doc.title, doc.text, texts_by_doc[doc.id])
                                   for doc, _, key in plan["absorb"]})
    scale, tries = 1.0, []
    while True:
        _apply(student, engine, trained, scale, number, current_weights)
        after_new = _items(new_probes, student.score(new_probes))
        after_items = _items(earlier_probes, student.score(earlier_probes))
        drop = _drop(before_items, after_items)
        broken = _broken(earlier_probes, before_items, after_items)
        tries.append({"scale": scale, "drop": drop, "broken": len(broken)})
        gate = config.gate
        if gate.max_drop is None or drop is None or drop <= gate.max_drop + 1e-12:
            decision = "accepted" if scale == 1.0 else "scaled"
            break
        if gate.action == "scale" and scale / 2 >= gate.min_scale - 1e-12:
            scale /= 2
            continue
        decision = "rejected"
        break
    oracle = {}
    if config.strategy == "library" and decision != "rejected":
        probes_all = new_probes + earlier_probes
        oracle = _items(probes_all, student.score(probes_all, oracle=True))
    drift = None if decision == "rejected" else _drift(student, engine, drift_ids, base_logprobs)
    timings["probe_after_seconds"] = time.perf_counter() - t0

    accepted = decision != "rejected"
    new_state = json.loads(json.dumps(state))
    entry = {"number": number, "finished": now(), "accepted": accepted, "decision": decision, "scale": scale,
             "documents": keys, "new": plan["new"], "changed": plan["changed"],
             "sequences": len(texts), "replayed": replayed, "sequences_split": split, "steps": stats.steps,
             "final_loss": stats.final_loss, "drift_bits_per_token": drift,
             "retention_before": _macro(before_items), "retention_after": _macro(after_items),
             "drop": drop, "gate_tries": tries, "probed_earlier": len(sample), "earlier": len(earlier),
             "unmeasured": [doc.id for doc in docs if not probes[doc.id]],
             "teacher_probes": [doc.id for doc in docs if probes[doc.id] and not doc.questions],
             "timings": {k: round(v, 3) for k, v in timings.items()}}
    staged = pending / "staged"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    notes = []
    if accepted:
        engine.load_adapter_state(trained)
        engine.save_adapter(staged / "adapter")
        entry["adapter_mb"] = round(sum(p.stat().st_size for p in (staged / "adapter").rglob("*")) / 2**20, 3)
        notes = _absorb_into_state(new_state, plan, number, probes, config, store, texts_by_doc, records, entry)
        # Earlier documents outside this update's probe budget get no cell in its row (unknown, not assumed).
        items = {**after_items, **after_new}
        new_state["matrix"].append({"update": number, "scores": _doc_means(items), "items": items,
                                    "before_new": _doc_means(before_new), "oracle": _doc_means(oracle)})
        new_state["base"].update(_doc_means(base_scores))
    else:
        for doc, digest, key in plan["absorb"]:
            new_state["rejected"][key] = {"update": number, "id": doc.id, "drop": drop}
    entry["broken"] = broken[:100]
    entry["notes"] = notes
    entry["metrics"] = store_metrics(new_state)
    new_state["updates"].append(entry)
    atomic_write_json(staged / "update.json", entry)
    shutil.copy(pending / EDITS, staged / EDITS)
    atomic_write_text(staged / "report.md", update_markdown(entry))
    store.commit(number, staged, new_state)
    return entry


# ------------------------------------------------------------------------------------------------- the pieces
def _self_edits(config: StoreConfig, acfg: AdaptConfig, docs: list[Document], pending: Path, progress: bool,
                teacher):
    from pipeline.adapt import write_given_edits, write_self_edits
    from pipeline.plan import plan_adaptation

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
        text_plan = plan_adaptation(acfg, docs, with_teacher=False, say=say)
        return write_given_edits(acfg, docs, given, pending / EDITS), text_plan
    from core.models import check_model_reference

    check_model_reference(config.teacher.model.path, "teacher", allow_adapter=True)
    text_plan = plan_adaptation(acfg, docs, with_teacher=True, say=say)
    return write_self_edits(acfg, docs, pending / EDITS, progress=progress, plan=text_plan, teacher=teacher), text_plan


def _probes(config: StoreConfig, docs: list[Document], pending: Path, teacher) -> dict[str, list[Question]]:
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


def _training_set(config, store, state, texts_by_doc, docs, superseded, number) -> tuple[list[str], int]:
    new = [t for d in docs for t in texts_by_doc[d.id]]
    if config.strategy in ("merge", "library"):
        return new, 0
    pool = [t for k in active_documents(state) if k not in superseded
            for t in store.read_document(k).get("training_texts", [])]
    if config.strategy == "joint":
        return pool + new, len(pool)
    import random

    want = int(round(config.replay.ratio * len(new)))
    if config.replay.max_sequences is not None:
        want = min(want, config.replay.max_sequences)
    rng = random.Random(context_seed(config.seed, "replay", number))
    replay = rng.sample(pool, min(want, len(pool)))
    return new + replay, len(replay)


def _apply(student: StoreStudent, engine, trained: dict, scale: float, number: int, current_weights) -> None:
    """Put the student in the state it will have once this update is committed at `scale`."""
    if student.strategy in STACKED:
        engine.restore_base_weights(current_weights)
        engine.fold_adapter_state(trained, scale)
        engine.load_adapter_state(student.zero)
    elif student.strategy == "joint":
        student.live = scaled(trained, scale)
        engine.load_adapter_state(student.live)
    else:
        student.library[number] = scaled(trained, scale)


def _drift_ids(engine, config: StoreConfig) -> list[int]:
    if config.drift.text:
        p = Path(config.drift.text).expanduser()
        if not p.is_file():
            raise UserError(f"drift.text: file not found: {p}")
        text = p.read_text(encoding="utf-8")
    else:
        from pipeline.demo import sample_docs

        text = "\n\n".join(d.text for d in load_documents(sample_docs()))
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"][: config.drift.max_tokens]
    if len(ids) < 2:
        raise UserError("drift.text has fewer than 2 tokens")
    return ids


def _drift(student: StoreStudent, engine, ids: list[int], base_logprobs) -> float:
    if student.strategy != "library":
        return kl_bits_per_token(base_logprobs, engine.next_token_logprobs(ids))
    values = []
    for state in student.library.values():  # a library's drift: the mean over its adapters
        engine.load_adapter_state(state)
        values.append(kl_bits_per_token(base_logprobs, engine.next_token_logprobs(ids)))
    engine.load_adapter_state(student.zero)
    return sum(values) / len(values) if values else 0.0


def _absorb_into_state(state, plan, number, probes, config, store, texts_by_doc, records, entry) -> list[str]:
    notes = []
    by_doc = {}
    for r in records:
        by_doc.setdefault(r["document"], []).append(r["self_edit"])
    for order, (doc, digest, key) in enumerate(plan["absorb"]):
        qs = probes[doc.id]
        store.write_document(key, {
            "key": key, "id": doc.id, "title": doc.title, "text": doc.text, "hash": digest,
            "self_edits": by_doc.get(doc.id, []), "training_texts": texts_by_doc[doc.id],
            "probes": [{"question": q.question, "answers": list(q.answers)} for q in qs],
            "probe_source": "user" if doc.questions else ("teacher" if qs else None),
        })
        version = {"key": key, "hash": digest, "update": number, "order": order, "added": now(),
                   "probes": len(qs), "probe_source": "user" if doc.questions else ("teacher" if qs else None)}
        entry_doc = state["documents"].setdefault(doc.id, {"versions": []})
        if entry_doc["versions"]:
            old = entry_doc["versions"][-1]
            old["superseded_by"] = key
            if config.strategy in STACKED:
                notes.append(f"{config.strategy} cannot undo: the old version of {doc.id} (absorbed in update "
                             f"{old['update']}) stays in the weights; its self-edits leave replay and its probes "
                             "are no longer measured")
            elif config.strategy == "joint":
                notes.append(f"joint retrained without the old version of {doc.id}")
        entry_doc["versions"].append(version)
    if config.strategy == "library":
        holding = {e["update"] for e in active_documents(state).values()}
        for u in state["updates"]:
            if u.get("accepted") and u["number"] not in holding and not u.get("retired"):
                u["retired"] = True
                notes.append(f"library: the adapter of update {u['number']} holds no current document and is retired")
    return notes


def store_metrics(state: dict) -> dict:
    rows, numbers = [], []
    for r in state["matrix"]:
        rows.append(r["scores"])
        numbers.append(r["update"])
    index = {n: i for i, n in enumerate(numbers)}
    learned = {k: index[e["update"]] for k, e in active_documents(state).items() if e["update"] in index}
    rows = [{k: v for k, v in r.items() if k in learned} for r in rows]
    out = forgetting_metrics(rows, learned, state["base"])
    if state["matrix"] and state["matrix"][-1].get("oracle"):
        oracle_rows = rows[:-1] + [{k: v for k, v in state["matrix"][-1]["oracle"].items() if k in learned}]
        out["oracle_retention"] = forgetting_metrics(oracle_rows, learned, state["base"])["retention"]
    return out


def _items(probes: list[tuple[str, Question]], scores: list[float]) -> dict[str, list[float]]:
    """Per document key, its probes' scores in probe order."""
    out: dict[str, list[float]] = {}
    for (k, _), s in zip(probes, scores):
        out.setdefault(k, []).append(s)
    return out


def _doc_means(items: dict[str, list[float]]) -> dict[str, float]:
    return {k: sum(v) / len(v) for k, v in items.items() if v}


def _macro(items: dict[str, list[float]]) -> float | None:
    means = list(_doc_means(items).values())
    return sum(means) / len(means) if means else None


def _drop(before: dict[str, list[float]], after: dict[str, list[float]]) -> float | None:
    """How far the earlier documents' mean probe score fell (macro over documents scored both times)."""
    common = [k for k in after if k in before]
    if not common:
        return None
    return _macro({k: before[k] for k in common}) - _macro({k: after[k] for k in common})


def _broken(probes, before: dict[str, list[float]], after: dict[str, list[float]]) -> list[dict]:
    out, seen = [], {}
    for k, q in probes:
        i = seen.get(k, 0)
        seen[k] = i + 1
        if before.get(k) and after.get(k) and before[k][i] > 0.5 >= after[k][i]:
            out.append({"document": k, "question": q.question, "answers": list(q.answers)})
    return out


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def update_markdown(entry: dict) -> str:
    m = entry["metrics"]
    lines = [f"# Update {entry['number']} ({entry['decision']})", "",
             f"- documents: {len(entry['new'])} new, {len(entry['changed'])} changed"
             + (f"; probes written by the teacher for {len(entry['teacher_probes'])}" if entry.get("teacher_probes") else "")
             + (f"; {len(entry['unmeasured'])} with no probe (absorbed unmeasured: {', '.join(entry['unmeasured'][:5])})"
                if entry.get("unmeasured") else ""),
             f"- training: {entry['sequences']} sequences ({entry['replayed']} replayed), {entry['steps']} steps",
             f"- earlier probes ({entry['probed_earlier']} of {entry['earlier']} documents): "
             f"{_fmt(entry['retention_before'])} -> {_fmt(entry['retention_after'])}",
             f"- drift: {_fmt(entry['drift_bits_per_token'])} bits/token (KL to the base)",
             f"- store: acquisition {_fmt(m['acquisition'])}, retention {_fmt(m['retention'])}, "
             f"backward transfer {_fmt(m['backward_transfer'])}, gain kept {_fmt(m['gain_kept'])}",
             "- seconds: " + ", ".join(f"{k.replace('_seconds', '')} {v:.1f}" for k, v in entry["timings"].items())]
    if entry["decision"] != "accepted":
        lines.append(f"- gate: {entry['decision']} (tries: "
                     + ", ".join(f"scale {t['scale']:g} drop {_fmt(t['drop'])}" for t in entry["gate_tries"]) + ")")
    if entry.get("broken"):
        lines += ["", "Probes this update broke (right before, wrong after):", ""]
        lines += [f"- {b['document']}: {b['question']} ({' | '.join(b['answers'])})" for b in entry["broken"]]
    for note in entry.get("notes", []):
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"
