"""The warm start's task side: the pairs of `warm_start.files` with their prompts rendered as the E-step renders them,
after refusing any pair whose passage the run evaluates (teacher/warm_start.py reads the files and trains)."""

from __future__ import annotations

from core.errors import UserError
from pipeline.documents import Document, load_documents
from pipeline.settings import TrainTeacherConfig
from teacher.warm_start import check_no_leak, normalise, read_pairs


def evaluated_passages(heldout: list, heldout_docs: list[str], exclude: list[str]) -> dict[str, str]:
    """Normalised passage -> where it is evaluated: the run's held-out contexts, every document of
    data.heldout_docs (not only those the run keeps) and of warm_start.exclude."""
    out: dict[str, str] = {}
    for doc in heldout:
        out.setdefault(normalise(doc.text), f"held-out context {doc.id!r}")
    for what, paths in (("data.heldout_docs", heldout_docs), ("warm_start.exclude", exclude)):
        for path in paths:
            for doc in load_documents(path):
                out.setdefault(normalise(doc.text), f"in {what} {path}")
    return out


def warm_start_pairs(config: TrainTeacherConfig, task, heldout: list) -> list[dict]:
    """The warm start's training pairs {"source", "title", "prompt", "completion"}, the prompt re-rendered from the
    passage by `task.prompt` (the run's self_edit.prompt template); [] without warm_start.files."""
    ws = config.warm_start
    if not ws.files:
        return []
    if config.task != "knowledge":
        raise UserError("warm_start.files: a warm start trains on passages; it works with task knowledge only")
    pairs = read_pairs(ws.files, completions_per_passage=ws.completions_per_passage)
    check_no_leak(pairs, evaluated_passages(heldout, config.data.heldout_docs, config.warm_start.exclude))
    if ws.limit is not None:
        pairs = pairs[: ws.limit]
    return [{"source": p.where, "title": p.title,
             "prompt": task.prompt(Document(id=p.where, title=p.title, text=p.passage)), "completion": p.completion}
            for p in pairs]


def check_warm_start(config: TrainTeacherConfig, task, heldout: list) -> None:
    """Before any model loads: the warm start's files read, no evaluated passage among them, every prompt fits
    m_step.max_length (from the teacher's tokenizer alone)."""
    pairs = warm_start_pairs(config, task, heldout)
    if not pairs:
        return
    from core.lora import check_lora_targets
    from core.models import load_tokenizer
    from teacher.sft import check_prompts_fit

    teacher = config.teacher.model
    check_lora_targets(teacher, config.m_step.lora, "m_step.lora.target_modules")
    try:
        check_prompts_fit(load_tokenizer(teacher.path, trust_remote_code=teacher.trust_remote_code),
                          [p["prompt"] for p in pairs], config.m_step, config.teacher.generation.use_chat_template)
    except UserError as err:
        raise UserError(f"warm start: {err}") from None
