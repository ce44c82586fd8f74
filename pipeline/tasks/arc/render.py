"""ARC tasks as text, as chat messages, and as (input_ids, labels) through any tokenizer.

Grid text is one row per line, one digit per cell, no separators: the most compact form, and each
cell is one character so a model can count columns. ``sep`` exists because some tokenizers merge
digit runs (Llama 3 splits numbers into chunks of up to 3 digits), so tokens stop lining up with
cells; ``sep=" "`` restores one-cell-per-token alignment at roughly twice the sequence length.

Loss masks come from character offsets, never from token ids: the conversation is rendered by the
tokenizer's own chat template, the assistant contents are located in that string, and a token is
trained on when its character span overlaps one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .data import MAX_SIDE, ArcTask, Grid

Message = dict[str, str]

SYSTEM_PROMPT = (
    "You solve visual pattern puzzles. A grid is written as lines of digits 0-9, one line per row, "
    "one digit per cell; each digit is a colour. Every example maps an input grid to an output grid "
    "by the same hidden rule. Find the rule and answer with the output grid for the last input, "
    "written the same way, and nothing else."
)

IGNORE_INDEX = -100


def grid_to_text(grid: Grid, sep: str = "") -> str:
    return "\n".join(sep.join(str(c) for c in row) for row in grid)


def text_to_grid(text: str) -> Grid | None:
    """Parse a model's answer back into a grid; None when it is not a valid grid.

    Tolerates surrounding blank lines, code fences, and spaces or commas between digits, so the
    parse does not depend on ``sep``.
    """
    rows = []
    for line in text.strip().splitlines():
        line = line.strip()
        if line.startswith("```"):
            continue
        cells = line.replace(",", "").replace(" ", "").replace("\t", "")
        if not cells.isdigit() or not cells.isascii():
            return None
        rows.append(tuple(int(c) for c in cells))
    if not 1 <= len(rows) <= MAX_SIDE or not 1 <= len(rows[0]) <= MAX_SIDE:
        return None
    if any(len(r) != len(rows[0]) for r in rows):
        return None
    return tuple(rows)


def demonstrations_text(task: ArcTask, sep: str = "") -> str:
    blocks = [
        f"Example {i}\nInput:\n{grid_to_text(ex.input, sep)}\nOutput:\n{grid_to_text(ex.output, sep)}"
        for i, ex in enumerate(task.train, start=1)
    ]
    return "\n\n".join(blocks)


def _query(task: ArcTask, test_index: int, sep: str) -> str:
    if not 0 <= test_index < len(task.test_inputs):
        raise IndexError(f"task {task.id} has {len(task.test_inputs)} test input(s), no index {test_index}")
    return (
        f"{demonstrations_text(task, sep)}\n\n"
        f"Now apply the rule to this input and give its output grid.\n"
        f"Input:\n{grid_to_text(task.test_inputs[test_index], sep)}"
    )


def predict_messages(
    task: ArcTask, test_index: int = 0, *, system: str | None = SYSTEM_PROMPT, sep: str = ""
) -> list[Message]:
    """System (unless None) and user turns; the model's reply is the prediction."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": _query(task, test_index, sep)})
    return messages


def train_messages(
    task: ArcTask, test_index: int = 0, *, system: str | None = SYSTEM_PROMPT, sep: str = ""
) -> list[Message]:
    """``predict_messages`` plus the known answer as the assistant turn."""
    if task.test_outputs is None:
        raise ValueError(f"task {task.id} has no test outputs to train on")
    answer = grid_to_text(task.test_outputs[test_index], sep)
    return predict_messages(task, test_index, system=system, sep=sep) + [{"role": "assistant", "content": answer}]


# ----------------------------------------------------------------------------------- tokenization


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _plain_render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> tuple[str, list]:
    # For base models without a chat template. Assistant turns end with the EOS token so that
    # loss="all" (or include_turn_end) teaches the model to stop after its answer.
    bos = getattr(tokenizer, "bos_token", None) or ""
    eos = getattr(tokenizer, "eos_token", None) or ""
    text, spans = bos, []
    for m in messages:
        text += f"{m['role'].capitalize()}:\n"
        start = len(text)
        text += m["content"]
        if m["role"] == "assistant":
            spans.append((start, len(text)))
            text += eos
        text += "\n\n"
    if add_generation_prompt:
        text += "Assistant:\n"
    return text, spans


def _template_spans(rendered: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
    # Walk the messages in order with a cursor, so an assistant answer that also appears earlier
    # (an identity task repeats its input) is matched in its own turn, not in the user's.
    # Templates may trim content (Llama 3 does), hence the stripped search. A non-assistant message
    # the template drops or rewrites (some templates fold the system turn away) is skipped.
    cursor, spans = 0, []
    for i, m in enumerate(messages):
        content = m["content"].strip()
        if not content:
            continue
        pos = rendered.find(content, cursor)
        if pos < 0:
            if m["role"] == "assistant":
                raise ValueError(
                    f"message {i} (assistant) not found verbatim in the chat template's output; "
                    "cannot build an output-only loss mask for this tokenizer"
                )
            continue
        cursor = pos + len(content)
        if m["role"] == "assistant":
            spans.append((pos, cursor))
    return spans


def render_chat(
    tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the model sees it, and the character spans of the assistant contents.

    Uses the tokenizer's chat template when it has one, else a plain "Role:\\n content" format.
    """
    if not has_chat_template(tokenizer):
        return _plain_render(tokenizer, messages, add_generation_prompt)
    rendered = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return rendered, _template_spans(rendered, messages)


def prompt_text(tokenizer: Any, messages: Sequence[Message]) -> str:
    """Text to generate from: the conversation plus the template's cue for the assistant to speak."""
    return render_chat(tokenizer, messages, add_generation_prompt=True)[0]


def encode_chat(
    tokenizer: Any, messages: Sequence[Message], loss: str = "all", *, include_turn_end: bool = False
) -> tuple[list[int], list[int]]:
    """Tokenize a training conversation and build its labels.

    ``loss="output"`` trains only on tokens overlapping the assistant contents; ``include_turn_end``
    also trains on the first token after each content (the template's end-of-turn token), which
    teaches the model to stop. ``loss="all"`` trains on every token.

    Special tokens come from the template alone (``add_special_tokens=False``), so a template that
    writes BOS does not get a second one. The sequence is unpadded; padding and masking pads are the
    collator's job (masking by pad id here would also mask EOS wherever pad == eos).
    """
    if loss not in ("all", "output"):
        raise ValueError(f"loss must be 'all' or 'output', got {loss!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("encode_chat needs a fast tokenizer (offset mapping); load it with use_fast=True")
    text, spans = render_chat(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(enc["input_ids"])
    if loss == "all":
        return input_ids, list(input_ids)
    if not spans:
        raise ValueError("loss='output' needs at least one assistant message")
    labels = [IGNORE_INDEX] * len(input_ids)
    offsets = enc["offset_mapping"]
    for a, b in spans:
        last = None
        for t, (s, e) in enumerate(offsets):
            if s < b and e > a:
                labels[t] = input_ids[t]
                last = t
        if last is None:
            raise ValueError(f"no token covers assistant content at characters {a}-{b}")
        if include_turn_end and last + 1 < len(input_ids):
            labels[last + 1] = input_ids[last + 1]
    return input_ids, labels
