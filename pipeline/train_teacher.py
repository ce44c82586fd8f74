"""`train_teacher`: set up contexts and a task, validate everything, then run ReST-EM (pipeline/rest_em.py)."""

from __future__ import annotations

from pipeline.settings import TrainTeacherConfig
from pipeline.documents import load_documents, load_questions
from core.errors import UserError
from core.models import check_model_reference
from pipeline.splits import split_contexts


def _knowledge_setup(config: TrainTeacherConfig):
    from pipeline.tasks.knowledge import KnowledgeTask

    # A run of no rounds only evaluates the initial teacher: its held-out documents are all it needs.
    if not config.data.docs and not (config.rounds == 0 and config.data.heldout_docs):
        raise UserError("no training documents (--docs PATH or data.docs in the config)")

    def with_questions(paths):
        docs = load_documents(paths)
        if config.data.questions:
            docs = load_questions(config.data.questions, docs)
        missing = [d.id for d in docs if not d.questions]
        if missing:
            raise UserError(f"document {missing[0]!r} has no questions; ReST-EM scores self-edits by the questions "
                            f"({len(missing)} documents lack them)")
        return docs

    pool = with_questions(config.data.docs) if config.data.docs else []
    heldout = with_questions(config.data.heldout_docs) if config.data.heldout_docs else None
    rounds, heldout = split_contexts(pool, heldout, config.data, config.rounds, key=lambda d: d.id)
    task = KnowledgeTask(config.self_edit, config.student.train, config.student.eval)
    return task, rounds, heldout


def prepare(config: TrainTeacherConfig):
    from core.config import check_ranges

    check_ranges(config)
    check_model_reference(config.teacher.model.path, "teacher")
    check_model_reference(config.student.model.path, "student")
    if config.rest_em.student_follows_teacher and config.teacher.model.path != config.student.model.path:
        raise UserError("rest_em.student_follows_teacher needs the same model as teacher and student")
    if config.m_step.deepspeed:
        from teacher.sft import check_deepspeed_config

        check_deepspeed_config(config.m_step.deepspeed)
    if config.student.eval.metric == "llm_judge" and not config.student.eval.judge_model:
        raise UserError("student.eval.metric is llm_judge but student.eval.judge_model is not set")
    if config.executor.kind == "ray":
        from pipeline.ray_executor import import_ray

        import_ray()  # before any model loads: a missing extra is said at once
    if config.task == "arc":
        from pipeline.tasks.arc.rest import arc_setup

        task, rounds, heldout = arc_setup(config)
    else:
        task, rounds, heldout = _knowledge_setup(config)
    _check_models(config, task, rounds)
    if config.warm_start.files:
        from pipeline.warm_start import check_warm_start

        check_warm_start(config, task, heldout)  # no evaluated passage among its pairs
    return task, rounds, heldout


def _check_models(config: TrainTeacherConfig, task, rounds: list[list]) -> None:
    """What the models must fit, from their configs and the teacher's tokenizer only (seconds): said now rather
    than after an E-step's hours."""
    from core.lora import check_lora_targets

    check_lora_targets(config.student.model, config.student.lora, "student.lora.target_modules")
    if config.rounds < 1:
        return
    from core.models import load_tokenizer
    from teacher.sft import check_prompts_fit

    teacher = config.teacher.model
    check_lora_targets(teacher, config.m_step.lora, "m_step.lora.target_modules")
    prompts = [task.prompt(c) for contexts in rounds[: config.rounds] for c in contexts]
    check_prompts_fit(load_tokenizer(teacher.path, trust_remote_code=teacher.trust_remote_code), prompts,
                      config.m_step, config.teacher.generation.use_chat_template)


def train_teacher(config: TrainTeacherConfig, *, force: bool = False, progress: bool = True,
                  wait: bool = False) -> list[dict]:
    """Run (or resume) ReST-EM and return the per-round metrics. `wait`: if another run writes the output folder,
    wait for it to end instead of refusing."""
    from core.rundir import RunDir
    from pipeline.rest_em import RestEM

    task, rounds, heldout = prepare(config)
    RunDir(config.output).check_writable()  # said before the executor starts (Ray: seconds)
    return RestEM(config, task, rounds, heldout, progress=progress).run(force=force, wait=wait)
