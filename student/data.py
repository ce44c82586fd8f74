"""Training sequences for an absorption: token ids, loss labels, and dynamic padding."""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


@dataclass
class TrainExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where a token must not be learned (a prompt, a pad)

    def __post_init__(self):
        if len(self.input_ids) != len(self.labels):
            raise ValueError("input_ids and labels differ in length")


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[TrainExample]:
    """Each text one sequence, loss on every token, ending in EOS so the model also learns where a fact stops."""
    out = []
    eos = tokenizer.eos_token_id
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        ids = ids[:max_length]
        out.append(TrainExample(ids, list(ids)))
    return out


@dataclass
class DistillExample:
    """One text for the context-distillation objective: the same target ids after two prefixes.

    `student_ids` = shared start + target, `teacher_ids` = shared start + passage block + target; the last
    `n_target` ids of both are the target, and the shared start gives its first token a predecessor.
    """

    student_ids: list[int]
    teacher_ids: list[int]
    n_target: int

    def __post_init__(self):
        n = self.n_target
        if n < 1 or n >= len(self.student_ids) or n >= len(self.teacher_ids):
            raise ValueError(f"n_target {n} must leave a prefix of at least one token in both sequences")
        if self.student_ids[-n:] != self.teacher_ids[-n:]:
            raise ValueError("student_ids and teacher_ids must end in the same target ids")


DISTILL_PASSAGE = "Passage:\n{context}\n\n"  # the teacher's passage block (an empty context adds nothing)


def distill_start(tokenizer) -> list[int]:
    """The prefix both sequences share: the tokenizer's BOS, or the ids of a newline when it has none."""
    if tokenizer.bos_token_id is not None:
        return [tokenizer.bos_token_id]
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the tokenizer has no BOS token and encodes a newline to nothing")
    return list(ids)


def encode_distill(tokenizer, texts: list[str], contexts: list[str], max_length: int) -> list[DistillExample]:
    """`texts[i]` after `contexts[i]` (its passage) for the teacher and after nothing for the student.

    The target is the text's tokens (no special tokens) and EOS, as `encode_texts` ends a sequence. When the
    teacher sequence would exceed `max_length` the target is cut (the same cut in both); the passage never is: a
    passage block that leaves no room for one target token is a ValueError. An empty context gives
    teacher_ids == student_ids.
    """
    if len(texts) != len(contexts):
        raise ValueError(f"{len(texts)} texts but {len(contexts)} contexts")
    start = distill_start(tokenizer)
    eos = tokenizer.eos_token_id
    out = []
    for i, (text, context) in enumerate(zip(texts, contexts)):
        target = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None and (not target or target[-1] != eos):
            target.append(eos)
        if not target:
            raise ValueError(f"text {i} has no tokens")
        block = list(tokenizer(DISTILL_PASSAGE.format(context=context), add_special_tokens=False)["input_ids"]) \
            if context else []
        room = max_length - len(start) - len(block)
        if room < 1:
            raise ValueError(f"context {i}: its passage block is {len(block)} tokens, which with the "
                             f"{len(start)}-token start leaves no room for the text in max_length={max_length}; "
                             "raise student.train.max_length or shorten the passage")
        target = target[:room]
        out.append(DistillExample(start + target, start + block + target, len(target)))
    return out


def collate(batch: list[TrainExample], pad_id: int):
    """Right-pad to the longest sequence in this batch only; pads get attention 0 and label IGNORE_INDEX."""
    import torch

    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def left_pad(prompts: list[list[int]], pad_id: int):
    """Left padding for generation, so every row's next token sits at the same position."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids, mask
