"""`adapt-student --task arc`: the teacher writes recipes per ARC task, the student trains on one and predicts.

The recipe used for a task is the first valid one in sample order (parses, fits the step budget, yields data):
samples are exchangeable draws from the teacher, so picking the first valid one is an unbiased draw from its valid
recipes, and it needs no extra training to choose. With none valid, `arc.fallback_recipe` is used when set (and
reported as the fallback); otherwise the task is predicted by the unadapted student and reported as not adapted.

Output folder:
    config.yaml         the resolved config (a rerun with another config is refused unless forced)
    .lock               held while a run writes the folder: a second run on it exits naming the first
    self_edits.jsonl    one line per teacher sample, appended per task as the teacher finishes it (resume point)
    results.jsonl       one line per task as the student finishes it: recipe, training, attempts (resume point)
    predictions.json    the ARC submission: {task id: [{"attempt_1": grid, "attempt_2": grid} per test input]}
    report.json         per task the recipe (or why there is none), training steps, solved (with solutions), timings
    adapters/<task>/    with arc.save_adapters: each task's LoRA (PEFT format)
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from core.config import TeacherSettings
from core.errors import UserError
from core.models import check_model_reference, load_tokenizer
from core.progress import progress_bar
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
from pipeline.runfolder import open_run
from pipeline.sampling import shares_model, teacher_backend
from pipeline.settings import AdaptConfig

from .data import ArcTask, make_submission, write_submission
from .task import ArcFewShotTask, load_contexts

EDITS = "self_edits.jsonl"
RESULTS = "results.jsonl"
PREDICTIONS = "predictions.json"
REPORT = "report.json"


def check_input(config: AdaptConfig) -> list[ArcTask]:
    """Everything that can be wrong with the input is found here, before the output folder is touched."""
    from core.config import check_ranges

    check_ranges(config)
    if config.docs or config.questions:
        raise UserError("--docs and --questions belong to --task knowledge; ARC tasks come from --arc-tasks FILE")
    tasks = load_contexts(config.arc, config.limit)
    check_model_reference(config.teacher.model.path, "teacher", allow_adapter=True)
    check_model_reference(config.student.model.path, "student")
    if config.teacher.generation.num_samples < 1:
        raise UserError("teacher.generation.num_samples must be at least 1")
    # Settings and the fallback recipe are checked without a tokenizer; the tokenizer is checked once loaded.
    ArcFewShotTask(None, config.arc, config.student.train, seed=config.seed)
    from core.lora import check_lora_targets

    check_lora_targets(config.student.model, config.student.lora, "student.lora.target_modules")
    return tasks


def adapt_arc(config: AdaptConfig, *, force: bool = False, progress: bool = True, wait: bool = False) -> dict:
    """Run (or resume) ARC test-time adaptation and return its report."""
    tasks = check_input(config)
    models = {"teacher": config.teacher.model, "student": config.student.model}
    with open_run(config.output, config, force=force, wait=wait, ignore=("executor",), report=REPORT,
                  models=models) as opened:
        if opened.finished is not None:
            return opened.finished
        run = opened.dir
        if force and (run / RESULTS).exists():
            # A forced rerun may carry a changed config: the student's results are redone, the teacher's samples kept.
            atomic_write_text(run / RESULTS, "")
        return _run(config, tasks, run, progress)


def _run(config: AdaptConfig, tasks: list[ArcTask], run: RunDir, progress: bool) -> dict:
    from student.engine import StudentEngine

    timings: dict[str, float] = {}
    same_model = shares_model(config.teacher, config.student)
    engine = StudentEngine(config.student.model, config.student.lora) if same_model else None
    tokenizer = engine.tokenizer if engine else load_tokenizer(
        config.student.model.path, trust_remote_code=config.student.model.trust_remote_code)
    arc = ArcFewShotTask.from_config(config, tokenizer)
    arc.check_tokenizer(tasks[0])

    t0 = time.perf_counter()
    redone: list[str] = []
    edits = write_recipes(arc, tasks, run / EDITS, teacher=config.teacher, seed=config.seed, engine=engine,
                          progress=progress, redone=redone)
    timings["teacher_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if engine is None:
        engine = StudentEngine(config.student.model, config.student.lora)
    timings["student_load_seconds"] = time.perf_counter() - t0

    # A torn last line (a kill mid-append) is dropped, so the next record does not glue onto it.
    repair_jsonl(run / RESULTS)
    done = {r["task"]: r for r in read_jsonl(run / RESULTS)}
    if redone and any(t in done for t in redone):  # a task whose recipes were drawn again is adapted again
        done = {t: r for t, r in done.items() if t not in redone}
        atomic_write_text(run / RESULTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()))
    todo = [t for t in tasks if t.id not in done]
    t0 = time.perf_counter()
    names = _adapter_names(tasks)
    for task in progress_bar(todo, desc="student: adapting and predicting", enabled=progress):
        result = adapt_one(arc, engine, task, edits[task.id], config.seed)
        if config.arc.save_adapters and result["adapted"]:
            engine.save_adapter(run / "adapters" / names[task.id])
        append_jsonl(run / RESULTS, result)
        done[task.id] = result
    timings["student_seconds"] = time.perf_counter() - t0

    results = [done[t.id] for t in tasks]
    submission = make_submission({r["task"]: r["attempts"] for r in results})
    write_submission(run / PREDICTIONS, submission, {t.id: t for t in tasks}, overwrite=True)
    report = _report(config, tasks, edits, results, timings)
    atomic_write_json(run / REPORT, report)
    return report


def write_recipes(arc: ArcFewShotTask, tasks: list[ArcTask], path: Path, *, teacher: TeacherSettings, seed: int,
                  engine=None, progress: bool = True, redone: list | None = None) -> dict[str, list[dict]]:
    """k recipes per task (unparseable drafts redrawn a bounded number of times), each prepared and recorded.

    One task's lines are appended together once its samples are drawn; a task cut short by a kill is redrawn, and
    so is one whose stamp (`pipeline.stamps`) no longer matches its data and teacher (its id added to `redone`).
    """
    from pipeline import stamps

    k = teacher.generation.num_samples
    made_by = stamps.model_id(teacher.model.path)
    expected = {t.id: stamps.stamp(repr((t.train, t.test_inputs)), arc.prompt(t), made_by) for t in tasks}
    # A task whose data or prompt changed, or drawn by another teacher, is drawn again; records from before stamps
    # are kept (and stamped) if the run recorded the current teacher.
    same_teacher = stamps.recorded_model_agrees(Path(path).parent, "teacher", made_by)
    groups = complete_groups(path, "task", k)
    done = stamps.resume(path, groups, expected, what="recipes", unit="tasks",
                         legacy=lambda key, recs: same_teacher)
    if redone is not None:
        redone.extend(t for t in groups if t not in done)
    todo = [t for t in tasks if t.id not in done]
    if not todo:
        return done
    with teacher_backend(teacher, engine) as (backend, adapter_off):
        for task in progress_bar(todo, desc="teacher: writing recipes", enabled=progress):
            sample_seed = context_seed(seed, "teacher", task.id)
            start = time.perf_counter()
            with adapter_off():
                (samples,) = arc.sample_self_edits(backend, [task], teacher.generation, [sample_seed])
            seconds = (time.perf_counter() - start) / len(samples)
            lines = []
            for i, s in enumerate(samples):
                prepared = arc.prepare(task, s.text)
                lines.append({
                    "task": task.id, "sample": i, "seed": sample_seed, "self_edit": s.text, "num_tokens": s.num_tokens,
                    "finished": s.finished, "attempts": s.attempts, "rejected": s.rejected,
                    "valid": prepared.valid, "reason": prepared.reason, "info": prepared.info,
                    "seconds": round(seconds, 3), stamps.KEY: expected[task.id],
                })
            for line in lines:
                append_jsonl(path, line)
            done[task.id] = lines
    return done


def adapt_one(arc: ArcFewShotTask, engine, task: ArcTask, edits: list[dict], seed: int) -> dict:
    """Choose the task's recipe, train on it from a fresh LoRA, predict; the task's result record.

    Every sample is prepared again here rather than trusting the validity recorded at sampling time: a forced
    rerun may have changed the limits a recipe must meet since.
    """
    checks = [arc.prepare(task, e["self_edit"]) for e in edits]
    chosen = next((i for i, p in enumerate(checks) if p.valid), None)
    prepared, source = (checks[chosen], "teacher") if chosen is not None else (None, None)
    if prepared is None and arc.fallback is not None:
        prepared, source = arc.prepare_recipe(task, arc.fallback), "fallback"
    result = {
        "task": task.id,
        "recipe_source": source,
        "sample": None if chosen is None else edits[chosen]["sample"],
        "recipe": None,
        "valid_samples": sum(p.valid for p in checks),
        "invalid_reasons": [p.reason for p in checks if not p.valid],
        "adapted": False,
        "reason": None,
        "training": None,
    }
    if prepared is not None and prepared.valid:
        stats, prediction = arc.adapt_and_predict(engine, task, prepared, context_seed(seed, "student", task.id))
        result.update(adapted=True, recipe=prepared.info["recipe"], training={
            **{k: prepared.info[k] for k in ("examples", "too_long", "tokens", "steps")},
            "final_loss": stats.final_loss, "seconds": round(stats.seconds, 3)})
    else:
        if prepared is not None:  # a fallback recipe this task's data cannot meet (budget, length)
            result["reason"] = f"fallback recipe: {prepared.reason}"
        else:
            result["reason"] = f"no valid recipe among {len(edits)} teacher sample(s)"
        engine.reset()
        prediction = arc.predict(engine, task)
    result.update(prediction.to_json())
    result["solved"] = arc.solved(task, prediction) if task.test_outputs is not None else None
    return result


def _adapter_names(tasks: list[ArcTask]) -> dict[str, str]:
    return {t.id: f"{i:04d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', t.id).strip('._')[:60] or 'task'}"
            for i, t in enumerate(tasks)}


def _report(config: AdaptConfig, tasks: list[ArcTask], edits: dict[str, list[dict]], results: list[dict],
            timings: dict[str, float]) -> dict:
    n_samples = sum(len(edits[t.id]) for t in tasks)
    scored = [r for r in results if r["solved"] is not None]
    solved = sum(r["solved"] for r in scored) if scored else None
    adapted = sum(r["adapted"] for r in results)
    fallback = sum(r["adapted"] and r["recipe_source"] == "fallback" for r in results)
    summary = f"arc tasks: {len(tasks)}  adapted: {adapted} ({fallback} with the fallback recipe)  " \
              f"valid recipes: {sum(r['valid_samples'] for r in results)}/{n_samples}"
    if scored:
        summary += f"\npass@2: {solved}/{len(scored)} solved"
    return {
        "task": "arc",
        "teacher": config.teacher.model.path,
        "student": config.student.model.path,
        "tasks": len(tasks),
        "self_edits": n_samples,
        "valid_self_edits": sum(r["valid_samples"] for r in results),
        "adapted": adapted,
        "adapted_with_fallback": fallback,
        "solved": solved,
        "pass_at_2": solved / len(scored) if scored else None,
        "summary": summary,
        "predictions": PREDICTIONS,
        "per_task": [
            {
                "id": r["task"],
                "recipe": r["recipe"],
                "recipe_source": r["recipe_source"],
                "sample": r["sample"],
                "valid_samples": r["valid_samples"],
                "adapted": r["adapted"],
                "reason": r["reason"],
                "invalid_reasons": r["invalid_reasons"],
                "training": r["training"],
                "candidates": r["candidates"],
                "predict_seconds": r["seconds"],
                "solved": r["solved"],
            }
            for r in results
        ],
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
