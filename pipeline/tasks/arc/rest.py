"""`train-teacher --task arc`: the contexts and the task object ReST-EM runs on (pipeline/rest_em.py)."""

from __future__ import annotations

from core.errors import UserError
from pipeline.settings import ArcSettings, TrainTeacherConfig

from .task import ArcFewShotTask, load_contexts


def arc_setup(config: TrainTeacherConfig):
    """(task, training contexts per round, held-out contexts); every input problem is a UserError here."""
    from core.models import load_tokenizer
    from pipeline.splits import split_contexts

    if config.data.docs or config.data.heldout_docs or config.data.questions:
        raise UserError("data.docs, data.heldout_docs and data.questions belong to --task knowledge; "
                        "ARC tasks come from arc.challenges (--arc-tasks) and arc.heldout_challenges")
    arc = config.arc
    pool = load_contexts(arc, require_solutions=True)
    heldout = None
    if arc.heldout_challenges:
        if not arc.heldout_solutions:
            raise UserError("arc.heldout_challenges needs arc.heldout_solutions: held-out scores are pass@2")
        heldout = load_contexts(ArcSettings(challenges=arc.heldout_challenges, solutions=arc.heldout_solutions),
                                require_solutions=True)
    elif arc.heldout_solutions:
        raise UserError("arc.heldout_solutions is set but arc.heldout_challenges is not")
    # Checked before the tokenizer loads: a bad setting should not wait for a model download.
    ArcFewShotTask(None, arc, config.student.train, seed=config.seed)
    rounds, heldout = split_contexts(pool, heldout, config.data, config.rounds, key=lambda t: t.id)
    tokenizer = load_tokenizer(config.student.model.path, trust_remote_code=config.student.model.trust_remote_code)
    task = ArcFewShotTask.from_config(config, tokenizer)
    task.check_tokenizer(pool[0])
    return task, rounds, heldout
