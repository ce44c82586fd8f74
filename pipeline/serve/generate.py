"""One chat answer from a resident causal LM: the conversation rendered with the model's own chat template, then
decoded token by token, greedy or sampled, with stop sequences and a live text stream.

`StudentEngine.generate` answers batches of single prompts greedily and returns only the text; a chat server needs
the whole conversation rendered, sampling, stop strings, why the answer ended and its text as it is decoded. This
calls the same transformers `generate` on the same model, with the same end-of-turn stops
(`core.models.stop_token_ids`), so a greedy answer to one user message is the engine's `reply(until="turn")` text
before its lines are joined. It needs only a model and a tokenizer: no engine, no store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from core.models import stop_token_ids


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Answer:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop sequence) or "length"
    prompt_tokens: int
    completion_tokens: int


def render(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the conversation plus the assistant's generation prompt."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template already holds any BOS; adding special tokens again would double it.
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    # No template (a plain LM): one user message is the prompt as `ask` gives it; a conversation, a transcript.
    if len(messages) == 1 and messages[0]["role"] == "user":
        return tokenizer(messages[0]["content"])["input_ids"]
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return tokenizer("\n".join(lines + ["Assistant:"]))["input_ids"]


def context_length(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class _Decoder:
    """transformers' streamer and stopping criterion in one: it sees each new token, emits the text that can no
    longer turn into a stop sequence, and stops decoding at a stop sequence or when the request is cancelled."""

    def __init__(self, tokenizer, stops: list[str], emit: Callable[[str], None] | None, cancelled: Callable[[], bool]):
        self.tokenizer, self.stops, self.emit, self.cancelled = tokenizer, stops, emit, cancelled
        self.ids: list[int] = []
        self.text, self.sent, self.hit_stop, self.prompt_seen = "", 0, False, False

    # streamer protocol: generate() first puts the prompt, then each new token, then calls end()
    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        if self.hit_stop:
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest of it
            return
        cut = min((i for i in (text.find(s, max(0, self.sent - len(s))) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit_stop, self.text = True, text[:cut]
            self._flush(cut)
            return
        self.text = text
        # Held back: a tail that may be the start of a stop sequence (it is sent once it is known not to be).
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._flush(len(text) - hold)

    def end(self) -> None:
        if not self.hit_stop:
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            self._flush(len(self.text))

    def _flush(self, upto: int) -> None:
        if upto > self.sent:
            if self.emit is not None:
                self.emit(self.text[self.sent:upto])
            self.sent = upto

    # stopping-criterion protocol (called after put for the same token)
    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = self.hit_stop or self.cancelled()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def complete(model, tokenizer, prompt_ids: list[int], sampling: Sampling, *,
             on_text: Callable[[str], None] | None = None, cancelled: Callable[[], bool] = lambda: False) -> Answer:
    """Decode one answer to `prompt_ids`; `on_text` receives its text piece by piece as it becomes final."""
    import torch

    ends = stop_token_ids(tokenizer)
    decoder = _Decoder(tokenizer, sampling.stop, on_text, cancelled)
    sample = sampling.temperature > 0
    if sample:
        # The model runs on one thread only, so the global generator is this request's alone while it decodes.
        torch.manual_seed(sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    ids = torch.tensor([prompt_ids], device=next(model.parameters()).device)
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=sampling.max_tokens,
            do_sample=sample, temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None, top_k=0 if sample else None,  # OpenAI's sampling has no top-k
            pad_token_id=tokenizer.pad_token_id, eos_token_id=ends, streamer=decoder, stopping_criteria=[decoder])
    new = out[0, len(prompt_ids):].tolist()
    ended = bool(new) and new[-1] in ends
    finish = "stop" if decoder.hit_stop or ended or (cancelled() and len(new) < sampling.max_tokens) else "length"
    return Answer(decoder.text, finish, len(prompt_ids), len(new))
