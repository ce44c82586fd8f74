"""ReST-EM for self-edits: E-step (sample, absorb, score), selection, M-step (SFT the teacher), held-out evaluation.

Run folder (every file appears whole; JSONL grows one finished record at a time; a rerun resumes):
    config.yaml, splits.json          the resolved config; which contexts are held out / used in each round
    baselines.jsonl                   the student's score before adaptation, once per (student, context), with the
                                      replies it was graded from (knowledge)
    warm_start/                       with warm_start.files: pairs.jsonl (rendered), data.json (hashes), teacher/,
                                      m_step.json; the teacher that round 0 evaluates and round 1 samples from
    round_0/heldout.jsonl             the initial teacher on held-out contexts (the comparison point)
    round_R/samples.jsonl             the teacher's k self-edits per context (written before any scoring)
    round_R/e_step.jsonl              one record per self-edit: seeds, scores, reward, timings; the replies graded
                                      (knowledge: `replies`, one list of {question, gold, pred, score} per seed)
    round_R/samples_more.jsonl        with rest_em.min_contexts_with_winner, when too few contexts had a winner: k more
    round_R/e_step_more.jsonl         self-edits per context (numbered k..2k-1) and their scores, drawn once
    round_R/selected.jsonl            the SFT set; selection.json says how it was chosen (ties, empty contexts, redraw)
    round_R/teacher/                  the round's teacher LoRA (PEFT, safetensors); teacher_merged/ when merged
    round_R/m_step.json               M-step stats; its presence marks the M-step done
    round_R/heldout.jsonl             the new teacher on held-out contexts
    metrics.jsonl, summary.md         per round: reward mean/spread, fraction positive and non-zero, contexts with a
                                      winner, selected, held-out score
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

from core.config import ModelSettings
from core.errors import UserError
from core.progress import progress_bar, say
from core.rundir import (
    RunDir,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    complete_groups,
    read_jsonl,
    repair_jsonl,
)
from core.seeds import context_seed
from pipeline import stamps
from pipeline.rest_em_stats import heldout_stats, reward_stats, summary_markdown, winner_stats
from pipeline.settings import TrainTeacherConfig
from teacher.selection import select

VOLATILE = ("timings",)  # fields that differ between otherwise identical runs


class RestEM:
    """Drive a ReST-EM run over any `SelfEditTask` (pipeline/tasks/base.py)."""

    def __init__(self, config: TrainTeacherConfig, task, train_rounds: list[list], heldout: list, *,
                 progress: bool = True):
        self.config = config
        self.task = task
        self.train_rounds = train_rounds
        self.heldout = heldout
        self.progress = progress
        self.run_dir = RunDir(config.output)
        self.base = config.teacher.model
        from pipeline.executor import make_executor

        self.executor = make_executor(config.executor, task, config.student.lora)
        from pipeline.tracking import Tracker

        self.tracker = Tracker([])
        self._steps = {"e_step": 0, "e_step_more": 0, "heldout": 0, "m_step": 0}
        self._baselines: dict[tuple[str, str], float] = {}
        self._resampled: dict[tuple[int, str], list[str]] = {}  # (round, tag) -> contexts a resume sampled again
        merge = config.rest_em.merge_teacher or config.rest_em.student_follows_teacher
        self.merge = merge
        self.force = False  # run(force=True): a changed warm-start file is accepted

    # ------------------------------------------------------------------------------------------------ paths
    def round_dir(self, r: int) -> Path:
        return self.run_dir.path / f"round_{r}"

    def teacher_at(self, r: int) -> tuple[ModelSettings, str | None]:
        """The teacher after round r: (model to load, LoRA adapter on it or None)."""
        marker = self.round_dir(r) / "m_step.json" if r else self.run_dir / "warm_start" / "m_step.json"
        if r == 0 and not marker.exists():
            return self.base, None
        info = _read_m_step(marker, self.run_dir.path)
        model = ModelSettings(**{**self.base.__dict__, "path": info["teacher_model"]})
        return model, info["teacher_adapter"]

    def student_for(self, r: int) -> ModelSettings:
        """The student base that scores self-edits written by the teacher after round r."""
        if self.config.rest_em.student_follows_teacher:
            model, adapter = self.teacher_at(r)
            assert adapter is None, "student_follows_teacher merges every round"
            return ModelSettings(**{**self.config.student.model.__dict__, "path": model.path})
        return self.config.student.model

    # --------------------------------------------------------------------------------------------- the loop
    def run(self, *, force: bool = False, wait: bool = False) -> list[dict]:
        """Run (or resume) the rounds in the run folder, holding it as its one writer (`wait`: wait for another
        run there to end instead of refusing)."""
        from core.config import to_dict
        from pipeline.runfolder import open_run
        from pipeline.tracking import open_tracker

        models = {"teacher": self.config.teacher.model, "student": self.config.student.model}
        try:
            # Where the inner loops run does not change what they compute: a run may resume on another executor.
            with open_run(self.run_dir.path, self.config, force=force, wait=wait,
                          ignore=("rounds", "executor", "report_to"), models=models):
                self.force = force
                self.tracker = open_tracker(self.config.report_to, self.run_dir.path, to_dict(self.config))
                try:
                    return self._run()
                finally:
                    self.tracker.close()
        finally:
            self.executor.close()

    def _run(self) -> list[dict]:
        self._write_splits()
        warm = self.warm_start()
        for rec in read_jsonl(self.run_dir / "baselines.jsonl"):
            self._baselines[(rec["student"], rec["context"])] = rec["score"]
        done = {m["round"] for m in read_jsonl(self.run_dir / "metrics.jsonl")}
        if 0 not in done:
            keys = ("pairs", "steps", "first_loss", "last_loss")
            extra = {"warm_start": {k: warm.get(k) for k in keys}} if warm else {}
            self._finish_round(0, extra, self.evaluate_heldout(0))
        for r in range(1, self.config.rounds + 1):
            if r not in done:
                self._round(r)
        metrics = read_jsonl(self.run_dir / "metrics.jsonl")
        atomic_write_text(self.run_dir / "summary.md", summary_markdown(metrics, self.config))
        failed = self.failures()
        if failed:
            from core.errors import ItemsFailed

            raise ItemsFailed(failed, "round_*/failures.jsonl")
        return metrics

    def _round(self, r: int) -> None:
        say(f"round {r}/{self.config.rounds}")
        t0 = time.perf_counter()
        records = self.e_step(r)
        records, selection, info = self.selection(r, records)  # with a redraw, its records join the first draw's
        e_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        m_info = self.m_step(r, selection)
        m_seconds = time.perf_counter() - t0
        for loss in m_info.get("losses") or []:
            self._steps["m_step"] += 1
            self.tracker.log({"m_step/loss": loss}, self._steps["m_step"])
        t0 = time.perf_counter()
        heldout = self.evaluate_heldout(r)
        failed = sum(f["phase"] != "heldout" for f in self.failures(r))
        e_step = {**reward_stats(records), **winner_stats(selection, len(self.train_rounds[r - 1]), info)}
        extra = {"e_step": {**e_step, **({"failed": failed} if failed > 0 else {})},
                 "selected": len(selection),
                 "m_step": {k: m_info.get(k) for k in ("pairs", "steps", "first_loss", "last_loss", "skipped")},
                 "timings": {"e_step_seconds": round(e_seconds, 2), "m_step_seconds": round(m_seconds, 2),
                             "heldout_seconds": round(time.perf_counter() - t0, 2)}}
        self._finish_round(r, extra, heldout)

    def failures(self, only: int | None = None) -> list[dict]:
        """Items that failed every try and have no record since (a rerun before the round ended may retry them)."""
        out = []
        for r in ([only] if only is not None else range(self.config.rounds + 1)):
            rdir = self.round_dir(r)
            for phase in ("e_step", "e_step_more", "heldout"):
                done = {(x["context"], x["sample"]) for x in read_jsonl(rdir / f"{phase}.jsonl")}
                out += [f for f in read_jsonl(rdir / "failures.jsonl")
                        if f["phase"] == phase and (f["context"], f["sample"]) not in done]
        return out

    def _finish_round(self, r: int, extra: dict, heldout: dict) -> None:
        append_jsonl(self.run_dir / "metrics.jsonl", {"round": r, **extra, "heldout": heldout})
        h = heldout
        e = extra.get("e_step") or {}
        self.tracker.log({"round/heldout_score": h["score_mean"], "round/heldout_gain": h["gain_mean"],
                          "round/heldout_failed": h.get("failed", 0), "round/reward_mean": e.get("reward_mean"),
                          "round/fraction_positive": e.get("fraction_positive"),
                          "round/fraction_nonzero": e.get("fraction_nonzero"), "round/failed": e.get("failed", 0),
                          "round/selected": extra.get("selected"),
                          "round/contexts_with_winner": e.get("contexts_with_winner"),
                          "round/m_step_last_loss": (extra.get("m_step") or {}).get("last_loss")}, r)
        said = f"round {r}: held-out score {h['score_mean']:.3f} (gain {h['gain_mean']:+.3f} ± {h['gain_ci95']:.3f})"
        if h.get("failed"):
            said += f", {h['failed']} held-out item(s) failed"
        if e:
            said += (f", E-step reward {e['reward_mean']:+.3f}, selected {extra['selected']} in "
                     f"{e['contexts_with_winner']}/{e['contexts']} contexts")
            said += " after a redraw" if e.get("redrawn") else ""
        say(said)

    def _write_splits(self) -> None:
        path = self.run_dir / "splits.json"
        splits = {"heldout": [self.task.context_id(c) for c in self.heldout],
                  "rounds": [[self.task.context_id(c) for c in rc] for rc in self.train_rounds]}
        if path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))
            if old["heldout"] != splits["heldout"] or old["rounds"][: len(splits["rounds"])] != splits["rounds"][: len(old["rounds"])]:
                raise UserError(f"{path}: the data differ from the run being resumed; use another --output")
        atomic_write_json(path, splits)

    # --------------------------------------------------------------------------------------------- models
    def _score_items(self, r: int, phase: str, student: ModelSettings, contexts: list, samples: dict,
                     seeds: list[int], path: Path, desc: str) -> dict:
        """Score every sample of `contexts` not yet in `path` through the executor; only this process writes.
        Returns {(context, sample): record} for everything recorded, old and new."""
        from pipeline.work import WorkItem, record_failure

        repair_jsonl(path)
        # A score is redone when its sample (as the sample's stamp says) or the student changed; one from before
        # stamps is kept (and stamped) if its sample was not drawn again and the run recorded the current student.
        # Samples for round r's E-step (and its redraw) come from the teacher after round r - 1.
        sampled_by = r - (phase != "heldout")
        scorer, resampled = stamps.model_id(student.path), self._resampled.get((sampled_by, phase), [])
        expected = {(cid, s["sample"]): stamps.of_sample(s, scorer) for cid in map(self.task.context_id, contexts)
                    for s in samples[cid]}
        same = stamps.recorded_model_agrees(self.run_dir.path, "student",
                                            stamps.model_id(self.config.student.model.path))
        kept = stamps.resume(path, {(x["context"], x["sample"]): [x] for x in read_jsonl(path)}, expected,
                             what=f"{phase} r{r}", unit="scores", legacy=lambda key, _: same and key[0] not in resampled)
        done = {key: recs[0] for key, recs in kept.items()}
        for cid in resampled:  # the unadapted student's score on a changed passage is taken again
            self._baselines.pop((student.path, cid), None)
        items = []
        for ctx in contexts:
            cid = self.task.context_id(ctx)
            for s in samples[cid]:
                if (cid, s["sample"]) not in done:
                    items.append(WorkItem(f"r{r}/{phase}/{cid}/{s['sample']}", ctx, s, seeds,
                                          self._baselines.get((student.path, cid))))
        failures = self.round_dir(r) / "failures.jsonl"
        results = self.executor.run(student, items)
        start, finished = time.perf_counter(), 0
        for item, rec, failure in progress_bar(results, desc=desc, enabled=self.progress and bool(items),
                                               total=len(items)):
            if failure is not None:
                record_failure(failures, failure, failure.key, phase=phase, context=item.sample["context"],
                               sample=item.sample["sample"])
                self._steps[phase] += 1
                self.tracker.log({f"{phase}/failed": 1}, self._steps[phase])
                continue
            cid = item.sample["context"]
            base_replies = rec.pop("baseline_replies", None)  # kept once per context, in baselines.jsonl
            if (student.path, cid) not in self._baselines:
                self._baselines[(student.path, cid)] = rec["baseline"]
                append_jsonl(self.run_dir / "baselines.jsonl",
                             {"student": student.path, "context": cid, "score": rec["baseline"],
                              **({"replies": base_replies} if base_replies is not None else {})})
            if phase == "heldout":
                rec["score"] = rec["scores"][0] if rec["scores"] else rec["baseline"]
            rec[stamps.KEY] = expected[(cid, item.sample["sample"])]
            append_jsonl(path, rec)
            done[(cid, item.sample["sample"])] = rec
            finished += 1
            self._steps[phase] += 1
            self.tracker.log({f"{phase}/reward": rec["reward"], f"{phase}/valid": float(rec["valid"]),
                              f"{phase}/items_per_second": finished / max(time.perf_counter() - start, 1e-9)},
                             self._steps[phase])
        self.executor.release()
        return done

    def sample(self, r: int, contexts: list, path: Path, *, n: int, temperature: float | None, tag: str,
               start: int = 0) -> dict:
        """k self-edits per context from the teacher after round r, stored before anything is scored; numbered from
        `start` (a redraw continues after the first draw's, so that (context, sample) stays one self-edit)."""
        from dataclasses import replace

        gen = replace(self.config.teacher.generation, num_samples=n)
        if temperature is not None:
            gen = replace(gen, temperature=temperature)
        # A context whose passage or prompt changed, or sampled by another teacher, is sampled again (records from
        # before stamps: if the run recorded the current base teacher; later teachers are this run's own M-steps).
        prompts = {self.task.context_id(c): (getattr(c, "text", ""), self.task.prompt(c)) for c in contexts}
        same = stamps.recorded_model_agrees(self.run_dir.path, "teacher", stamps.model_id(self.base.path))
        model, adapter = self.teacher_at(r)
        complete, expected, self._resampled[(r, tag)] = stamps.resume_prompted(
            path, complete_groups(path, "context", n), prompts, stamps.model_id(model.path, adapter),
            same_model=same, what=f"samples r{r} ({tag})", unit="contexts")
        todo = [c for c in contexts if self.task.context_id(c) not in complete]
        if todo:
            backend = self._teacher_backend(r)
            try:
                for ctx in progress_bar(todo, desc=f"teacher r{r}: sampling ({tag})", enabled=self.progress):
                    cid = self.task.context_id(ctx)
                    seed = context_seed(self.config.seed, tag, r, cid)
                    prompt = prompts[cid][1]
                    t0 = time.perf_counter()
                    if hasattr(self.task, "sample_self_edits"):  # tasks that redraw unparseable drafts (ARC)
                        (samples,) = self.task.sample_self_edits(backend, [ctx], gen, [seed])
                    else:
                        (samples,) = backend.sample([prompt], gen, [seed])
                    recs = [{"context": cid, "sample": i, "seed": seed, "prompt": prompt, "self_edit": s.text,
                             "num_tokens": s.num_tokens, "finished": s.finished,
                             # the group's sampling time shared by its samples: a self-edit's cost, beside its scoring
                             "timings": {"seconds": round((time.perf_counter() - t0) / len(samples), 3)},
                             **({"attempts": s.attempts, "rejected": s.rejected} if hasattr(s, "attempts") else {}),
                             stamps.KEY: expected[cid]}
                            for i, s in enumerate(samples, start)]
                    for rec in recs:
                        append_jsonl(path, rec)
                    complete[cid] = recs
            finally:
                backend.close()
                del backend
                gc.collect()
        return complete

    def _teacher_backend(self, r: int):
        from core.lora import load_with_lora
        from teacher.backends import TransformersBackend, make_backend

        model, adapter = self.teacher_at(r)
        if self.config.teacher.backend == "vllm":
            return make_backend("vllm", model, lora_path=adapter)
        if adapter is None:
            return TransformersBackend(model)
        from core.models import load_tokenizer

        peft_model = load_with_lora(model, adapter, None, trainable=False)
        return TransformersBackend(model, peft_model=peft_model, tokenizer=load_tokenizer(model.path))

    # ----------------------------------------------------------------------------------------------- E-step
    def e_step(self, r: int, *, more: bool = False) -> list[dict]:
        """Round r's self-edits sampled, absorbed and scored; `more`: the redraw's (samples_more.jsonl,
        e_step_more.jsonl), numbered after the first draw's, from their own seeds, scored with the same ones."""
        cfg = self.config
        contexts = self.train_rounds[r - 1]
        rdir = self.round_dir(r)
        n = cfg.teacher.generation.num_samples
        phase, suffix = ("e_step_more", "_more") if more else ("e_step", "")
        samples = self.sample(r - 1, contexts, rdir / f"samples{suffix}.jsonl", n=n, temperature=None, tag=phase,
                              start=n if more else 0)
        student = self.student_for(r - 1)
        seeds = [context_seed(cfg.seed, "student", s) for s in range(cfg.rest_em.seeds_per_edit)]
        done = self._score_items(r, phase, student, contexts, samples, seeds, rdir / f"{phase}.jsonl",
                                 f"E-step r{r}: absorbing" + (" (redraw)" if more else ""))
        return [done[key] for c in contexts for s in samples[self.task.context_id(c)]
                if (key := (self.task.context_id(c), s["sample"])) in done]

    # -------------------------------------------------------------------------------------------- warm start
    def warm_start(self) -> dict | None:
        """With warm_start.files: SFT the teacher on their pairs before round 1 (warm_start/), trained and recorded
        as an M-step, so that teacher_at(0) is the warm teacher. Returns its M-step stats (None: no warm start)."""
        from pipeline.warm_start import warm_start_pairs
        from teacher.warm_start import record_data

        folder = self.run_dir / "warm_start"
        marker = folder / "m_step.json"
        pairs = warm_start_pairs(self.config, self.task, self.heldout)
        if not pairs:
            return _read_m_step(marker, self.run_dir.path) if marker.exists() else None
        trained = marker.exists()
        if not trained and (self.round_dir(0) / "heldout_samples.jsonl").exists():
            raise UserError(f"{self.run_dir.path} already evaluated its initial teacher without a warm start; a warm "
                            "start comes before round 0: use another --output")
        record_data(folder, self.config.warm_start.files, pairs, trained=trained, force=self.force)
        if trained:
            return _read_m_step(marker, self.run_dir.path)
        from teacher.m_step import run_m_step
        from teacher.sft import merge_teacher

        say(f"warm start: SFT on {len(pairs)} pairs ({self.base.path})")
        info = run_m_step(self.base, [{"prompt": p["prompt"], "completion": p["completion"]} for p in pairs],
                          self.config.m_step, folder / "teacher",
                          use_chat_template=self.config.teacher.generation.use_chat_template,
                          seed=context_seed(self.config.seed, "warm_start"))
        info.update({"teacher_model": self.base.path, "teacher_adapter": str(folder / "teacher")})
        if self.merge:
            merge_teacher(self.base, folder / "teacher", folder / "teacher_merged")
            info.update({"teacher_model": str(folder / "teacher_merged"), "teacher_adapter": None})
        gc.collect()
        atomic_write_json(marker, _locate_in_run(info, self.run_dir.path))
        for step, loss in enumerate(info.get("losses") or [], start=1):
            self.tracker.log({"warm_start/loss": loss}, step)
        return info

    # ------------------------------------------------------------------------------------ selection, M-step
    def selection(self, r: int, records: list[dict]) -> tuple[list[dict], list[dict], dict]:
        """(the round's records, its SFT set, selection.json). With rest_em.min_contexts_with_winner, a selection
        over `records` (the E-step's) with fewer contexts with a winner first draws as many self-edits again per
        context, once, and selects over all of them; the redraw's records then join `records`."""
        rdir = self.round_dir(r)
        if (rdir / "selected.jsonl").exists() and (rdir / "selection.json").exists():
            info = json.loads((rdir / "selection.json").read_text(encoding="utf-8"))
            more = self.e_step(r, more=True) if info.get("redrawn") else []
            return records + more, read_jsonl(rdir / "selected.jsonl"), info
        need = self.config.rest_em.min_contexts_with_winner
        sel, redraw = self._select(records), {}
        if need is not None:
            before = len({x["context"] for x in sel.chosen})
            # The decision is the first draw's; a redraw once begun (its samples on disk) is finished even where a
            # retried item has changed that draw since, so that every resume ends with the same records.
            redrawn = before < need or (rdir / "samples_more.jsonl").exists()
            if redrawn:
                say(f"round {r}: {before} of {len(self.train_rounds[r - 1])} contexts have a winner "
                    f"(rest_em.min_contexts_with_winner={need}); drawing as many self-edits again")
                records = records + self.e_step(r, more=True)
                sel = self._select(records)
            redraw = {"redrawn": redrawn, "contexts_with_winner_before": before,
                      "contexts_with_winner": len({x["context"] for x in sel.chosen})}
        chosen = [{"context": x["context"], "sample": x["sample"], "reward": x["reward"], "prompt": x["prompt"],
                   "completion": x["self_edit"]} for x in sel.chosen]
        re = self.config.rest_em
        info = {"policy": re.selection, "cap": re.top_k, "must_beat_baseline": re.must_beat_baseline,
                "selected": len(chosen), "ties": sel.ties, "contexts_without_pick": sel.contexts_without_pick,
                **redraw}
        atomic_write_text(rdir / "selected.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chosen))
        atomic_write_json(rdir / "selection.json", info)
        return records, chosen, info

    def _select(self, records: list[dict]):
        re = self.config.rest_em
        return select(records, re.selection, cap=re.top_k, must_beat_baseline=re.must_beat_baseline)

    def m_step(self, r: int, selected: list[dict]) -> dict:
        from teacher.m_step import run_m_step
        from teacher.sft import merge_teacher

        rdir = self.round_dir(r)
        marker = rdir / "m_step.json"
        if marker.exists():
            return _read_m_step(marker, self.run_dir.path)
        prev_model, prev_adapter = self.teacher_at(r - 1)
        if not selected:
            say(f"round {r}: no self-edit selected; the teacher stays as it was")
            info = {"skipped": True, "pairs": 0, "teacher_model": prev_model.path, "teacher_adapter": prev_adapter}
            atomic_write_json(marker, _locate_in_run(info, self.run_dir.path))
            return info
        init = self.config.rest_em.m_step_init
        if init == "base":
            train_on, init_adapter = self.base, None
        elif self.merge:
            train_on, init_adapter = prev_model, None  # a fresh LoRA on last round's merged weights
        else:
            train_on, init_adapter = self.base, prev_adapter  # continue last round's LoRA
        say(f"round {r}: M-step on {len(selected)} pairs ({init}: {train_on.path}"
            + (f" + {init_adapter}" if init_adapter else "") + ")")
        info = run_m_step(train_on, [{"prompt": s["prompt"], "completion": s["completion"]} for s in selected],
                          self.config.m_step, rdir / "teacher", init_adapter=init_adapter,
                          use_chat_template=self.config.teacher.generation.use_chat_template,
                          seed=context_seed(self.config.seed, "m_step", r))
        info.update({"teacher_model": train_on.path, "teacher_adapter": str(rdir / "teacher")})
        if self.merge:
            merge_teacher(train_on, rdir / "teacher", rdir / "teacher_merged")
            info.update({"teacher_model": str(rdir / "teacher_merged"), "teacher_adapter": None})
        gc.collect()
        atomic_write_json(marker, _locate_in_run(info, self.run_dir.path))
        return info

    # -------------------------------------------------------------------------------------------- held-out
    def evaluate_heldout(self, r: int) -> dict:
        cfg = self.config
        rdir = self.round_dir(r)
        n = cfg.rest_em.heldout_samples
        samples = self.sample(r, self.heldout, rdir / "heldout_samples.jsonl", n=n,
                              temperature=cfg.rest_em.heldout_temperature, tag="heldout")
        student = self.student_for(r)
        seeds = [context_seed(cfg.seed, "student", 0)]
        done = self._score_items(r, "heldout", student, self.heldout, samples, seeds, rdir / "heldout.jsonl",
                                 f"held-out r{r}")
        keys = [(self.task.context_id(c), i) for c in self.heldout for i in range(n)]
        stats = heldout_stats([done[k] for k in keys if k in done])
        missing = sum(k not in done for k in keys)
        return {**stats, "failed": missing} if missing else stats


def final_teacher(output: str | Path, rounds: int, base: str) -> str:
    """The run's last trained teacher (a merged folder or a LoRA adapter: both load as --teacher), else `base`."""
    out = Path(output)
    for r in range(rounds, 0, -1):
        marker = out / f"round_{r}" / "m_step.json"
        if marker.exists():
            info = _read_m_step(marker, out)
            return info["teacher_adapter"] or info["teacher_model"]
    marker = out / "warm_start" / "m_step.json"
    if marker.exists():
        info = _read_m_step(marker, out)
        return info["teacher_adapter"] or info["teacher_model"]
    return base


# A round's teacher usually lives inside the run folder. m_step.json records such paths relative to the run as
# well (under "in_run"), so a run folder that is moved or copied elsewhere still resumes from its own checkpoints.
_TEACHER_KEYS = ("teacher_model", "teacher_adapter")


def _locate_in_run(info: dict, run: Path) -> dict:
    root = Path(run).resolve()
    in_run = {}
    for key in _TEACHER_KEYS:
        if info.get(key):
            try:
                in_run[key] = Path(info[key]).resolve().relative_to(root).as_posix()
            except ValueError:  # the base model or another folder: kept as given
                pass
    return {**info, "in_run": in_run} if in_run else info


def _read_m_step(marker: Path, run: Path) -> dict:
    info = json.loads(marker.read_text(encoding="utf-8"))
    for key, rel in info.pop("in_run", {}).items():
        info[key] = str(Path(run) / rel)
    return info
