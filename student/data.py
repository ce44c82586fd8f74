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
