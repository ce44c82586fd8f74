"""The absorption engine: one resident base model, one LoRA, reset in memory for every self-edit.

The paper's loop re-wrapped the base with `get_peft_model`, built a new `Trainer`, padded to 2048 tokens, saved the
adapter and reloaded it in a separate server for every candidate self-edit; most of its ~30 s per self-edit was that
overhead. Here the base is loaded and wrapped once; `reset()` puts the LoRA back to its initial values in place,
`train()` is a short loop with a fresh optimizer over the LoRA parameters only, and `answer()` generates greedily in
batches with the adapter live. Nothing touches disk until `save_adapter()`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import LoraSettings, ModelSettings, TrainSettings
from pipeline.errors import UserError
from pipeline.models import encode_prompt, load_causal_lm, load_tokenizer, use_chat
from student.data import TrainExample, collate, encode_texts, left_pad

ADAPTER = "default"


@dataclass
class TrainStats:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def wrap_with_lora(model, settings: LoraSettings):
    from peft import get_peft_model

    try:
        return get_peft_model(model, lora_config(settings))
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise UserError(
            f"LoRA target modules {settings.target_modules} do not fit this model ({err.__class__.__name__}); "
            f"its linear layers are: {', '.join(names)}"
        ) from None


class StudentEngine:
    """Load once, then `reset() -> train() -> answer()` per self-edit.

    >>> engine = StudentEngine(ModelSettings(path="Qwen/Qwen2.5-7B"), LoraSettings())
    >>> engine.reset(seed=0); engine.train_texts(["The bridge is made of stone."], TrainSettings(), seed=0)
    >>> engine.answer(["What is the bridge made of?"], qa_prompt="Q: {question}\\nA:")
    """

    def __init__(self, model: ModelSettings, lora: LoraSettings, *, base_model=None, tokenizer=None):
        self.settings = model
        self.lora_settings = lora
        self.tokenizer = tokenizer or load_tokenizer(model.path, trust_remote_code=model.trust_remote_code)
        base = base_model or load_causal_lm(
            model.path,
            dtype=model.dtype,
            device=model.device,
            trust_remote_code=model.trust_remote_code,
            attn_implementation=model.attn_implementation,
        )
        self.model = wrap_with_lora(base, lora)
        self.device = next(self.model.parameters()).device
        self._lora = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not self._lora:
            raise UserError(f"LoRA on {lora.target_modules} created no trainable parameters")
        self._initial = {n: p.detach().clone() for n, p in self._lora.items()}
        self._newline_ids: set[int] | None = None

    # ------------------------------------------------------------------------------------------ adapter state
    @property
    def lora_parameters(self) -> dict:
        return self._lora

    def reset(self, seed: int | None = None) -> None:
        """Return the LoRA to a freshly initialised state, in place.

        With no seed: exactly the state it had when the engine was built. With a seed: a new draw from PEFT's default
        initialisation (A ~ kaiming-uniform, B = 0), so that seeds also vary the starting point, as separate runs do.
        """
        import torch

        gen = None
        if seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.no_grad():
            for name, param in self._lora.items():
                if gen is None:
                    param.copy_(self._initial[name])
                elif "lora_A" in name:
                    fresh = torch.empty(param.shape, dtype=torch.float32)
                    torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=gen)
                    param.copy_(fresh.to(param.dtype))
                else:
                    param.zero_()

    def adapter_state(self) -> dict:
        return {n: p.detach().to("cpu", copy=True) for n, p in self._lora.items()}

    def load_adapter_state(self, state: dict) -> None:
        import torch

        missing = set(self._lora) - set(state)
        if missing:
            raise ValueError(f"adapter state lacks {len(missing)} LoRA tensors, e.g. {sorted(missing)[0]}")
        with torch.no_grad():
            for name, param in self._lora.items():
                param.copy_(state[name].to(param.device, param.dtype))

    # -------------------------------------------------------------------------------------------- training
    def encode(self, texts: list[str], max_length: int) -> list[TrainExample]:
        return encode_texts(self.tokenizer, texts, max_length)

    def train_texts(self, texts: list[str], settings: TrainSettings, seed: int = 0) -> TrainStats:
        return self.train(self.encode(texts, settings.max_length), settings, seed)

    def train(self, examples: list[TrainExample], settings: TrainSettings, seed: int = 0) -> TrainStats:
        """Train the LoRA on `examples` from its current state; only LoRA parameters change."""
        import torch

        if not examples:
            raise ValueError("no training examples")
        stats = TrainStats()
        start = time.perf_counter()
        torch.manual_seed(seed)  # dropout
        order_gen = torch.Generator(device="cpu").manual_seed(int(seed))
        n_batches = math.ceil(len(examples) / settings.batch_size)
        total = max(1, n_batches * settings.epochs)
        params = list(self._lora.values())
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings, total))
        if settings.gradient_checkpointing:
            # Reentrant checkpointing drops gradients when the frozen inputs carry none (LoRA's case).
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.enable_input_require_grads()
        pad = self.tokenizer.pad_token_id
        self.model.train()
        try:
            for _ in range(settings.epochs):
                order = torch.randperm(len(examples), generator=order_gen).tolist()
                for b in range(n_batches):
                    batch = [examples[i] for i in order[b * settings.batch_size : (b + 1) * settings.batch_size]]
                    inputs = {k: v.to(self.device) for k, v in collate(batch, pad).items()}
                    loss = self.model(**inputs).loss
                    loss.backward()
                    if settings.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    stats.steps += 1
                    stats.tokens += int(inputs["attention_mask"].sum())
                    stats.losses.append(float(loss.detach()))
        finally:
            self.model.eval()
            if settings.gradient_checkpointing:
                self.model.gradient_checkpointing_disable()
        stats.seconds = time.perf_counter() - start
        return stats

    # ------------------------------------------------------------------------------------------ generation
    def encode_prompts(self, prompts: list[str], use_chat_template: str = "auto") -> list[list[int]]:
        chat = use_chat(self.tokenizer, use_chat_template)
        return [encode_prompt(self.tokenizer, p, chat) for p in prompts]

    def generate(
        self, prompt_ids: list[list[int]], *, max_new_tokens: int = 64, batch_size: int = 16, stop_at_newline=True
    ) -> list[str]:
        """Greedy continuations, batched with left padding; decoding stops at the first newline when asked."""
        import torch

        outputs: list[str] = [""] * len(prompt_ids)
        # Longest prompts first so a batch holds similar lengths and pads little.
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
        newline_ids = self._newline_token_ids() if stop_at_newline else None
        self.model.eval()
        with torch.no_grad():
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                ids, mask = left_pad([prompt_ids[i] for i in idx], self.tokenizer.pad_token_id)
                gen = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    # A fresh criterion per batch: it remembers which rows are done.
                    stopping_criteria=[_StopOnTokens(newline_ids)] if stop_at_newline else None,
                )
                new = gen[:, ids.shape[1] :]
                for row, i in enumerate(idx):
                    outputs[i] = self.tokenizer.decode(new[row], skip_special_tokens=True)
        return outputs

    def answer(self, questions: list[str], *, qa_prompt: str, use_chat_template="auto", max_new_tokens=64,
               batch_size=16) -> list[str]:
        prompts = [qa_prompt.format(question=q) for q in questions]
        raw = self.generate(self.encode_prompts(prompts, use_chat_template), max_new_tokens=max_new_tokens,
                            batch_size=batch_size)
        return [first_line(r) for r in raw]

    def _newline_token_ids(self) -> set[int]:
        if self._newline_ids is None:
            vocab = range(len(self.tokenizer))
            pieces = self.tokenizer.batch_decode([[i] for i in vocab])
            self._newline_ids = {i for i, s in zip(vocab, pieces) if "\n" in s}
        return self._newline_ids

    # ---------------------------------------------------------------------------------------- persistence
    def save_adapter(self, out_dir: str | Path) -> Path:
        """Standard PEFT layout (adapter_config.json + adapter_model.safetensors), checked after writing."""
        from student.adapters import save_peft_adapter

        return save_peft_adapter(self.model, out_dir, expected=self.adapter_state())

    def load_adapter(self, adapter_dir: str | Path) -> None:
        from student.adapters import read_adapter_state

        self.load_adapter_state(read_adapter_state(adapter_dir, self._lora, adapter_name=ADAPTER))


class _StopOnTokens:
    """Per-row stop once a row has produced any token that contains a newline."""

    def __init__(self, token_ids: set[int]):
        import torch

        self.ids = torch.tensor(sorted(token_ids)) if token_ids else None
        self.done = None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.ids is None:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = torch.isin(input_ids[:, -1], self.ids.to(input_ids.device))
        self.done = last if self.done is None else (self.done | last)
        return self.done


def first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0].strip() if text else ""


def _schedule(settings: TrainSettings, total: int):
    warmup = int(settings.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if settings.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        if settings.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor
