"""What an adapt-student run will do, known before any model loads: passages, sequences, steps and a time estimate.

A document longer than a passage is split (`pipeline.passages`: token-aware, on paragraph, then sentence, then word
boundaries, a little overlap, each passage keeping the document's title). The passage size is bounded by what fits:
the student's `train.max_length` (a passage is also a training sequence), the student's context, and the teacher's
context less the prompt and its generation budget. The document's questions stay with the document.
Only tokenizers and config files are read here, never weights, so a bad size is a one-line error in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from core.config import PassageSettings, SelfEditSettings, StudentSettings, TeacherSettings
from core.errors import UserError
from pipeline.documents import Document
from pipeline.passages import PassagePlan, plan_document, split_text, token_counter
from pipeline.settings import AdaptConfig
from pipeline.tasks import knowledge

# Unset passages.max_tokens: a passage of about a SQuAD paragraph or three, which a small teacher can still read whole.
DEFAULT_PASSAGE_TOKENS = 512
# Tokens kept free in a training sequence beyond the passage (the title line, EOS, merges at the seams).
MARGIN = 8


@dataclass
class AdaptPlan:
    plans: dict[str, PassagePlan]  # per document id
    passage_tokens: int  # the budget used
    bound: str  # what set it
    counter: object = field(repr=False, default=None)

    @property
    def passages(self) -> int:
        return sum(len(p.passages) for p in self.plans.values())

    def split_documents(self) -> list[PassagePlan]:
        return [p for p in self.plans.values() if p.split]

    def summary(self) -> dict:
        return {"passage_tokens": self.passage_tokens, "bound": self.bound, "passages": self.passages,
                "split_documents": {p.document.id: p.stats() for p in self.split_documents()}}


def context_length(model_path: str) -> int | None:
    """The model's context (max_position_embeddings), read from its config or GGUF metadata; None if unknown."""
    import json

    from core import gguf

    if not model_path:
        return None
    found = gguf.gguf_file(model_path) if Path(model_path).expanduser().exists() else None
    if found is not None:
        converted = gguf.converted_folder(found)
        if converted is not None:  # reading the GGUF's metadata costs seconds; a converted config.json does not
            return context_length(str(converted))
        from gguf import GGUFReader

        reader = GGUFReader(str(found))
        arch_field = reader.fields.get("general.architecture")
        arch = bytes(arch_field.parts[arch_field.data[0]]).decode() if arch_field else ""
        f = reader.fields.get(f"{arch}.context_length")
        return int(f.parts[f.data[0]][0]) if f is not None else None
    cfg = Path(model_path).expanduser() / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8"))
        return data.get("max_position_embeddings") or data.get("n_positions")
    return None


def passage_budget(count, docs: list[Document], *, student: StudentSettings, teacher: TeacherSettings,
                   self_edit: SelfEditSettings, passages: PassageSettings, teacher_count=None,
                   with_teacher: bool = True) -> tuple[int, str]:
    """(tokens per passage, which limit set it); a setting that does not fit is a UserError naming the limit."""
    title = max((count(f"{d.title}\n") for d in docs if d.title and self_edit.prefix_title), default=0)
    limits = {"student.train.max_length": student.train.max_length - title - MARGIN}
    ctx = context_length(student.model.path)
    if ctx:
        limits["the student's context"] = min(ctx, student.train.max_length) - MARGIN
    if with_teacher:
        tctx = context_length(teacher.model.path)
        if tctx:
            template = knowledge.teacher_prompts([Document("x", "", "")], self_edit)[0]
            prompt = (teacher_count or count)(template)
            limits["the teacher's context less its prompt and teacher.generation.max_new_tokens"] = (
                tctx - prompt - teacher.generation.max_new_tokens - MARGIN)
    bound, fits = min(limits.items(), key=lambda kv: kv[1])
    wanted = passages.max_tokens
    if wanted is not None:
        if wanted > fits:
            raise UserError(f"passages.max_tokens={wanted} does not fit: at most {fits} tokens fit ({bound})")
        if wanted < 16:
            raise UserError(f"passages.max_tokens={wanted} is too small (at least 16 tokens)")
        return wanted, "passages.max_tokens"
    if fits < 16:
        raise UserError(f"no passage fits: {bound} leaves {fits} tokens; raise it or lower the generation budget")
    if fits >= DEFAULT_PASSAGE_TOKENS:
        return DEFAULT_PASSAGE_TOKENS, "the default (passages.max_tokens)"
    return fits, bound


def plan_adaptation(config: AdaptConfig, docs: list[Document], *, with_teacher: bool = True,
                    say=None) -> AdaptPlan:
    """adapt-student's plan: `plan_passages` with its config's settings."""
    return plan_passages(docs, student=config.student, teacher=config.teacher, self_edit=config.self_edit,
                         passages=config.passages, with_teacher=with_teacher, say=say)


def plan_passages(docs: list[Document], *, student: StudentSettings, teacher: TeacherSettings,
                  self_edit: SelfEditSettings, passages: PassageSettings, with_teacher: bool = True,
                  say=None) -> AdaptPlan:
    """Each document split into passages that fit the student's training length and context and the teacher's
    context (`with_teacher`: a teacher will read them); only tokenizers are loaded."""
    from core.models import load_tokenizer

    student_tok = load_tokenizer(student.model.path, trust_remote_code=student.model.trust_remote_code)
    count = token_counter(student_tok)
    teacher_count = None
    if with_teacher and teacher.model.path != student.model.path:
        from core.models import adapter_base

        tpath = adapter_base(teacher.model.path) or teacher.model.path
        teacher_count = token_counter(load_tokenizer(tpath, trust_remote_code=teacher.model.trust_remote_code))
    budget, bound = passage_budget(count, docs, student=student, teacher=teacher, self_edit=self_edit,
                                   passages=passages, teacher_count=teacher_count, with_teacher=with_teacher)
    overlap = min(passages.overlap_tokens, budget // 4)
    plans = {}
    for doc in docs:
        plans[doc.id] = plan_document(doc, count, budget, overlap)
    plan = AdaptPlan(plans, budget, bound, count)
    if plan.passages > passages.max_passages:
        raise UserError(
            f"{plan.passages} passages of <= {budget} tokens (from {len(docs)} documents) exceed "
            f"passages.max_passages={passages.max_passages}: each passage costs "
            f"{teacher.generation.num_samples} teacher samples and their training steps, days on a CPU; "
            "raise passages.max_passages (or passages.max_tokens) to go ahead, or pass fewer documents")
    if say:
        for p in plan.split_documents():
            say(f"document {p.document.id!r}: {sum(p.tokens) - sum(p.overlap_tokens)} tokens split into "
                f"{len(p.passages)} passages of <= {budget} tokens ({bound}; {overlap} tokens of overlap)")
    return plan


def fit_sequences(texts: list[str], count, max_tokens: int) -> tuple[list[str], int]:
    """Training texts with every one longer than `max_tokens` split on sentence/word boundaries (never cut); the
    number that had to be split."""
    out, split = [], 0
    for t in texts:
        if count(t) <= max_tokens:
            out.append(t)
        else:
            split += 1
            out.extend(split_text(t, count, max_tokens))
    return out, split


def estimate(config: AdaptConfig, plan: AdaptPlan, *, given: dict[str, list[str]] | None) -> dict:
    """Sequences, steps and a rough time for the run (labelled rough: a FLOP count at a measured matmul rate)."""
    import json
    import time

    import torch

    k = config.teacher.generation.num_samples
    cap = config.self_edit.max_sequences or 10**9
    if given is not None:
        per_doc = {d: sum(min(cap, len(knowledge.split_self_edit(c, config.self_edit))) for c in cs)
                   for d, cs in given.items()}
        edit_seqs = sum(per_doc.values())
        gen_tokens = 0
    else:
        lines = min(cap, max(1, config.teacher.generation.max_new_tokens // 24))  # ~24 tokens a line
        edit_seqs = plan.passages * k * lines
        gen_tokens = plan.passages * k * config.teacher.generation.max_new_tokens
    seqs = edit_seqs + (plan.passages if config.self_edit.include_passage else 0)
    tr = config.student.train
    steps = math.ceil(seqs / tr.batch_size) * tr.epochs
    passage_tokens = sum(sum(p.tokens) for p in plan.plans.values())
    train_tokens = (edit_seqs * 24 + (passage_tokens if config.self_edit.include_passage else 0)) * tr.epochs
    out = {"documents": len(plan.plans), "passages": plan.passages, "self_edits": (
        sum(len(v) for v in given.values()) if given is not None else plan.passages * k),
        "training_sequences": seqs, "optimizer_steps": steps, "training_tokens": train_tokens,
        "generated_tokens": gen_tokens, "exact": given is not None}
    from types import SimpleNamespace

    from core.shapes import Dims

    params = None
    cfg = Path(config.student.model.path).expanduser() / "config.json"
    if cfg.is_file():
        try:  # the FLOP counter the benchmarks use (grouped-query attention counted right)
            params = Dims.from_config(SimpleNamespace(**json.loads(cfg.read_text(encoding="utf-8")))).linear_params
        except (AttributeError, TypeError):
            params = None
    if params:
        a = torch.randn(512, 512)
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 0.2:
            a @ a
            n += 1
        rate = n * 2 * 512**3 / (time.perf_counter() - t0)
        # Training: forward + input-gradient passes over frozen weights (4 x params FLOPs a token) at about a third
        # of the matmul rate; decoding one token at a time reaches far less, a tenth here.
        seconds = 4 * params * train_tokens / (rate / 3) + 2 * params * gen_tokens / (rate / 10)
        out["estimated_seconds_rough"] = round(seconds)
    return out
