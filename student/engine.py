"""The absorption engine: one resident base model, one LoRA, reset in memory for every self-edit.

The paper's loop re-wrapped the base with `get_peft_model`, built a new `Trainer`, padded to 2048 tokens, saved the
adapter and reloaded it in a separate server for every candidate self-edit; most of its ~30 s per self-edit was that
overhead. Here the base is loaded and wrapped once; `reset()` puts the LoRA back to its initial values in place,
`train()` is a short loop with a fresh optimizer over the LoRA parameters only, and `answer()` generates greedily in
batches with the adapter live. Nothing touches disk until `save_adapter()`.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from core.config import LoraSettings, ModelSettings, TrainSettings
from core.errors import UserError
from core.lora import wrap_with_lora
from core.models import encode_prompt, load_causal_lm, load_tokenizer, reply_until, stop_token_ids, use_chat
from student.data import (IGNORE_INDEX, DistillExample, TrainExample, collate, encode_distill, encode_texts,
                          left_pad)

ADAPTER = "default"  # PEFT's name for the engine's one adapter


@dataclass
class TrainStats:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


@dataclass
class GenerationStats:
    """What one `generate` call decoded: the work an answer needed, apart from what batching added."""

    prompt_tokens: list[int]  # per prompt, in input order
    new_tokens: list[int]  # per prompt: tokens up to and including the one that stopped it
    batch_steps: list[int]  # per batch: decoding steps run (its longest row)
    seconds: float = 0.0


def seeded_lora_state(params: dict, seed: int) -> dict:
    """PEFT's default LoRA initialisation (A kaiming-uniform, B zero) drawn from `seed`, for parameters `params`."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    state = {}
    for name, param in params.items():
        if "lora_A" in name:
            fresh = torch.empty(param.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=gen)
            state[name] = fresh.to(param.device, param.dtype)
        else:
            state[name] = torch.zeros_like(param)
    return state


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
        self._identity: dict | None = None
        self.last_generation: GenerationStats | None = None
        # Context distillation keeps the teacher's log-probabilities on the model's device up to this many bytes (all
        # examples together), else on the CPU.
        self.max_teacher_cache_bytes = 1 << 30

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

        with torch.no_grad():
            for name, value in self.initial_state(seed).items():
                self._lora[name].copy_(value)

    def initial_state(self, seed: int | None = None) -> dict:
        """The LoRA values `reset(seed)` installs, keyed like `lora_parameters` (the batched bank,
        `student.batched`, starts from these)."""
        return self._initial if seed is None else seeded_lora_state(self._lora, seed)

    def identity(self) -> dict:
        """What this student is, for a training checkpoint's fingerprint: the base model's content (the hash
        `core.provenance` records, remembered per file by `core.hashing`, so a large model is not read again on a
        resume), the dtype it was loaded in, and the LoRA settings. Where no hash is known (a hub id the cache does
        not hold, a model handed in memory) the path stands for the content."""
        if self._identity is None:
            from core.provenance import model_identity

            content = {k: v for k, v in model_identity(self.settings.path).items() if k != "path" and v is not None}
            self._identity = {"model": content or {"path": self.settings.path},
                              "dtype": str(self.model.get_base_model().dtype),
                              "lora": dataclasses.asdict(self.lora_settings)}
        return self._identity

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

    def train_texts(self, texts: list[str], settings: TrainSettings, seed: int = 0, *,
                    contexts: list[str] | None = None, progress: bool = False, checkpoint=None) -> TrainStats:
        """Train on `texts` with `settings.objective`: nll (`train`), or context_distill (`train_distill`), which
        needs `contexts[i]`, the passage text i is about; nll does not use them."""
        if settings.objective == "context_distill":
            if contexts is None:
                raise ValueError("student.train.objective=context_distill needs each text's passage (contexts=)")
            return self.train_distill(texts, contexts, settings, seed, progress=progress, checkpoint=checkpoint)
        return self.train(self.encode(texts, settings.max_length), settings, seed, progress=progress,
                          checkpoint=checkpoint)

    def train(self, examples: list[TrainExample], settings: TrainSettings, seed: int = 0, *,
              progress: bool = False, checkpoint=None) -> TrainStats:
        """Train the LoRA on `examples` from its current state with the next-token loss; only LoRA parameters change.

        `progress` shows a bar over optimizer steps (for long absorptions; the inner loop of ReST-EM leaves it off).
        `checkpoint` (a `student.checkpoint.TrainCheckpoint`) saves the training state now and then and, on a rerun
        with the same examples, settings and seed, continues from the last save to the same result; it is removed
        once training ends.
        """
        if not examples:
            raise ValueError("no training examples")
        _require_nll(settings, "StudentEngine.train")
        pad = self.tokenizer.pad_token_id

        def step_loss(rows: list[TrainExample]):
            batch = collate(rows, pad)
            # Counted on the host copy: reading a device tensor back each step would stall the GPU queue.
            tokens = int(batch["attention_mask"].sum())
            inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            return self.model(**inputs).loss, tokens

        key = None
        if checkpoint is not None:
            from student.checkpoint import fingerprint

            key = fingerprint(examples, settings, seed, student=self.identity())
        return self._optimize(examples, settings, seed, step_loss, progress=progress, checkpoint=checkpoint, key=key)

    def train_distill(self, texts: list[str], contexts: list[str], settings: TrainSettings, seed: int = 0, *,
                      progress: bool = False, checkpoint=None) -> TrainStats:
        """Absorb `texts` by context distillation: make the student without the passage predict like the student
        with it.

        Per text, the loss at each of its tokens (and EOS) is the forward KL(p_with_passage || p_adapted) over the
        whole vocabulary at temperature 1: p_with_passage is the model with the adapter off and `contexts[i]` in
        the prompt (`student.data.encode_distill`), computed once before the first step and cached for all epochs;
        p_adapted is the model with the adapter on and no passage. The loss is the mean over a batch's target tokens
        of `distill_weight` * KL + (1 - distill_weight) * the next-token loss of the same tokens. Batches, optimizer,
        schedule, clipping, seeds, checkpoints and stats are `train`'s (`settings.objective` is taken to be
        context_distill whatever it says).
        """
        started = time.perf_counter()
        settings = dataclasses.replace(settings, objective="context_distill")
        examples = encode_distill(self.tokenizer, list(texts), list(contexts), settings.max_length)
        if not examples:
            raise ValueError("no training examples")
        weight = float(settings.distill_weight)
        # With weight 0 the teacher is never read: the objective is the next-token loss on the target tokens.
        teacher = self.teacher_logprobs(examples) if weight > 0 else [None] * len(examples)
        rows = [_DistillRow(ex, t) for ex, t in zip(examples, teacher)]

        def step_loss(batch: list[_DistillRow]):
            return self.distill_loss([r.example for r in batch], [r.teacher for r in batch], weight)

        key = None
        if checkpoint is not None:
            from student.checkpoint import fingerprint

            key = fingerprint(examples, settings, seed, contexts=list(contexts), student=self.identity())
        return self._optimize(rows, settings, seed, step_loss, progress=progress, checkpoint=checkpoint, key=key,
                              started=started)

    def teacher_logprobs(self, examples: list[DistillExample]) -> list:
        """Per example, log p(next token) over the vocabulary at the `n_target` positions that predict its target
        tokens, from `teacher_ids` (the passage in the prompt) with the adapter off: a [n_target, vocab] tensor.

        Stored as float32 for a float32 model, else as float16 (clamped at -1e4; renormalised when read), on the
        model's device while all of them fit in `max_teacher_cache_bytes`, else on the CPU (moved per step).
        """
        import torch

        dtype = torch.float32 if next(self.model.parameters()).dtype == torch.float32 else torch.float16
        keep_kw = _accepts_logits_to_keep(self.model)
        total = sum(ex.n_target for ex in examples)
        store = None
        out = []
        self.model.eval()
        with torch.no_grad(), self.model.disable_adapter():
            for ex in examples:
                n, length = ex.n_target, len(ex.teacher_ids)
                ids = torch.tensor([ex.teacher_ids], device=self.device)
                if keep_kw:  # only the last n+1 positions' logits: a long passage costs no lm_head work
                    logits = self.model(input_ids=ids, logits_to_keep=n + 1).logits[0, -(n + 1):-1]
                else:
                    logits = self.model(input_ids=ids).logits[0, length - n - 1:length - 1]
                logp = torch.log_softmax(logits.float(), dim=-1)
                if dtype != torch.float32:
                    logp = logp.clamp(min=-1e4)
                if store is None:
                    size = total * logp.shape[-1] * torch.empty((), dtype=dtype).element_size()
                    store = self.device if size <= self.max_teacher_cache_bytes else torch.device("cpu")
                out.append(logp.to(store, dtype))
        if store is not None and store.type == "cpu" and self.device.type == "cuda":
            out = [t.pin_memory() for t in out]
        return out

    def distill_loss(self, examples: list[DistillExample], teacher: list, weight: float = 1.0):
        """(loss, tokens) for one batch: `weight` * KL(teacher || student) + (1 - weight) * NLL, each a mean over
        the batch's target tokens; the student forward runs with the adapter as it is, on right-padded
        `student_ids`. `teacher`: `teacher_logprobs`' tensors for these examples (unused when weight is 0)."""
        import torch

        batch = collate([TrainExample(ex.student_ids, ex.student_ids) for ex in examples], self.tokenizer.pad_token_id)
        tokens = int(batch["attention_mask"].sum())
        logits = self.model(input_ids=batch["input_ids"].to(self.device, non_blocking=True),
                            attention_mask=batch["attention_mask"].to(self.device, non_blocking=True)).logits
        picked = torch.cat([logits[row, len(ex.student_ids) - ex.n_target - 1:len(ex.student_ids) - 1]
                            for row, ex in enumerate(examples)])
        logp = torch.log_softmax(picked.float(), dim=-1)
        kl = nll = None
        if weight > 0:
            # Renormalised in float32: a float16 cache is then still a distribution, and the KL never negative.
            t = torch.log_softmax(torch.cat([x.to(self.device, non_blocking=True) for x in teacher]).float(), dim=-1)
            kl = (t.exp() * (t - logp)).sum(-1).mean()
        if weight < 1:
            target = torch.tensor([i for ex in examples for i in ex.student_ids[-ex.n_target:]], device=self.device)
            nll = -logp.gather(-1, target.unsqueeze(-1)).mean()
        if nll is None:
            return kl, tokens
        if kl is None:
            return nll, tokens
        return weight * kl + (1.0 - weight) * nll, tokens

    def _optimize(self, rows: list, settings: TrainSettings, seed: int, step_loss, *, progress: bool, checkpoint,
                  key: str | None, started: float | None = None) -> TrainStats:
        """The loop `train` and `train_distill` share: AdamW over the LoRA, `settings`' schedule and clipping, the
        batches of `_batch_plan(rows, settings, seed)`; `step_loss(batch) -> (loss, tokens)` is the objective.
        `key`: the run's checkpoint fingerprint (with `checkpoint`)."""
        import torch

        stats = TrainStats()
        start = time.perf_counter() if started is None else started
        torch.manual_seed(seed)  # dropout
        plan = _batch_plan(rows, settings, seed)
        total = max(1, len(plan))
        params = list(self._lora.values())
        # One fused kernel per step on GPU instead of a dozen per tensor; the CPU default is already a single loop.
        fused = {"fused": True} if self.device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay, **fused)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings, total))
        losses = []
        from core.progress import progress_bar

        start_step = 0
        if checkpoint is not None:
            from student import checkpoint as ckpt_io

            meta = ckpt_io.load(checkpoint, key=key, lora=self._lora, optimizer=optimizer)
            if meta is not None:
                start_step = int(meta["step"])
                losses = [torch.tensor(x, device=self.device) for x in meta["losses"]]
                stats.tokens = int(meta["tokens"])
                stats.steps = start_step
                with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": replaying its steps
                    warnings.simplefilter("ignore")
                    for _ in range(start_step):
                        scheduler.step()
        with self._training_mode(settings):
            for batch in progress_bar(plan[start_step:], desc="student: training", enabled=progress):
                loss, tokens = step_loss(batch)
                stats.tokens += tokens
                loss.backward()
                if settings.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                stats.steps += 1
                losses.append(loss.detach())
                if checkpoint is not None and stats.steps < total and checkpoint.due(stats.steps):
                    ckpt_io.save(checkpoint, key=key, step=stats.steps, lora=self._lora, optimizer=optimizer,
                                 losses=torch.stack(losses).float().cpu().tolist(), tokens=stats.tokens)
        stats.losses = torch.stack(losses).float().cpu().tolist() if losses else []
        if checkpoint is not None:
            ckpt_io.clear(checkpoint)
        stats.seconds = time.perf_counter() - start
        return stats

    @contextmanager
    def _training_mode(self, settings: TrainSettings):
        if settings.gradient_checkpointing:
            # Reentrant checkpointing drops gradients when the frozen inputs carry none (LoRA's case).
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.enable_input_require_grads()
        self.model.train()
        try:
            yield
        finally:
            self.model.eval()
            if settings.gradient_checkpointing:
                self.model.gradient_checkpointing_disable()

    def _lora_modules(self) -> list[tuple[str, object]]:
        from peft.tuners.lora.layer import Linear as LoraLinear

        found = []
        for name, module in self.model.named_modules():
            if not hasattr(module, "lora_A") or ADAPTER not in module.lora_A:
                continue
            if type(module) is not LoraLinear or module.use_dora.get(ADAPTER) or ADAPTER in module.lora_variant:
                raise NotImplementedError(
                    f"batched LoRA supports plain LoRA on linear layers; {name} is {type(module).__name__}"
                )
            found.append((name, module))
        return found

    # ------------------------------------------------------------------------------------------ generation
    def encode_prompts(self, prompts: list[str], use_chat_template: str = "auto") -> list[list[int]]:
        chat = use_chat(self.tokenizer, use_chat_template)
        return [encode_prompt(self.tokenizer, p, chat) for p in prompts]

    def generate(
        self, prompt_ids: list[list[int]], *, max_new_tokens: int = 64, batch_size: int = 16, stop_at_newline=True,
        routing=None,
    ) -> list[str]:
        """Greedy continuations, batched with left padding; decoding stops at the first newline when asked.

        `routing` (the batched bank's, `student.batched.BatchedLoraBank.generate`): a context manager held around
        decoding that yields a function, called with each batch's prompt indices before the batch is decoded. The
        work each answer needed is recorded in `last_generation`.
        """
        import torch

        start = time.perf_counter()
        outputs: list[str] = [""] * len(prompt_ids)
        needed = [0] * len(prompt_ids)
        steps = []
        # Longest prompts first so a batch holds similar lengths and pads little.
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
        newline_ids = self._newline_token_ids() if stop_at_newline else set()
        ends = stop_token_ids(self.tokenizer)  # EOS and the chat template's end of turn
        stop_ids = torch.tensor(sorted(newline_ids | set(ends)), dtype=torch.long)
        self.model.eval()
        with torch.no_grad(), (routing if routing is not None else nullcontext()) as select:
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                if select is not None:
                    select(idx)
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
                    eos_token_id=ends,
                    # A fresh criterion per batch: it remembers which rows are done.
                    stopping_criteria=[_StopOnTokens(newline_ids)] if stop_at_newline else None,
                )
                new = gen[:, ids.shape[1] :].cpu()
                steps.append(new.shape[1])
                stopped = torch.isin(new, stop_ids)
                first_stop = torch.where(stopped.any(1), stopped.int().argmax(1) + 1, new.shape[1]).tolist()
                for row, i in enumerate(idx):
                    outputs[i] = self.tokenizer.decode(new[row], skip_special_tokens=True)
                    needed[i] = first_stop[row]
        self.last_generation = GenerationStats(
            prompt_tokens=[len(p) for p in prompt_ids], new_tokens=needed, batch_steps=steps,
            seconds=time.perf_counter() - start,
        )
        return outputs

    def answer(self, questions: list[str], *, qa_prompt: str, use_chat_template="auto", max_new_tokens=64,
               batch_size=16, until: str = "line") -> list[str]:
        return self.reply([qa_prompt.format(question=q) for q in questions], use_chat_template=use_chat_template,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, until=until)

    def reply_until(self, use_chat_template="auto", until: str = "auto") -> str:
        """What `reply` reads for these settings: "line" or "turn"."""
        return reply_until(self.tokenizer, use_chat_template, until)

    def reply(self, prompts: list[str], *, use_chat_template="auto", max_new_tokens=64, batch_size=16,
              until: str = "line") -> list[str]:
        """Greedy replies to whole prompts. `until`: "line" keeps the first line; "turn" the whole reply up to the
        end of the turn (or max_new_tokens), its lines joined by spaces; "auto" is "turn" for a prompt given
        through a chat template, else "line"."""
        until = self.reply_until(use_chat_template, until)
        raw = self.generate(self.encode_prompts(prompts, use_chat_template), max_new_tokens=max_new_tokens,
                            batch_size=batch_size, stop_at_newline=until == "line")
        return [first_line(r) if until == "line" else whole_turn(r) for r in raw]

    def continuation_logprobs(self, prompt_ids: list[list[int]], continuations: list[str], *,
                              batch_size: int = 16) -> list[tuple[float, int]]:
        """Per pair, the summed log-probability of `continuations[i]`'s tokens after `prompt_ids[i]` under the
        student as it is now (adapter live), and how many tokens that was. For scoring gold answers densely."""
        import torch

        if len(prompt_ids) != len(continuations):
            raise ValueError(f"{len(prompt_ids)} prompts for {len(continuations)} continuations")
        rows = []
        for prompt, text in zip(prompt_ids, continuations):
            cont = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not cont:
                raise ValueError(f"continuation {text!r} has no tokens")
            rows.append(TrainExample(list(prompt) + cont, [IGNORE_INDEX] * len(prompt) + cont))
        out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))
        self.model.eval()
        with torch.no_grad():
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                batch = {k: v.to(self.device) for k, v in collate([rows[i] for i in idx],
                                                                   self.tokenizer.pad_token_id).items()}
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                labels = batch["labels"][:, 1:]
                keep = labels != IGNORE_INDEX
                picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
                for row, i in enumerate(idx):
                    out[i] = (float(picked[row].sum()), int(keep[row].sum()))
        return out

    def _newline_token_ids(self) -> set[int]:
        if self._newline_ids is None:
            vocab = range(len(self.tokenizer))
            pieces = self.tokenizer.batch_decode([[i] for i in vocab])
            self._newline_ids = {i for i, s in zip(vocab, pieces) if "\n" in s}
        return self._newline_ids

    # --------------------------------------------------------------------------------------- stacking updates
    def fold_adapter_state(self, state: dict, weight: float = 1.0) -> None:
        """Add a LoRA's update (scaled by `weight`) into the base weights, in place; the live LoRA is left as it was.

        What SEAL's continual recipe does by merging each adapter before training the next, without writing a model:
        a store keeps each update's small adapter and folds them in order when it loads, which gives the merged
        weights again, bit for bit, since the same additions run in the same order.
        """
        import torch

        live = self.adapter_state()
        try:
            self.load_adapter_state(state)
            with torch.no_grad():
                for _, module in self._lora_modules():
                    base = module.base_layer.weight
                    delta = module.get_delta_weight(ADAPTER).to(torch.float32) * float(weight)
                    base.copy_((base.to(torch.float32) + delta).to(base.dtype))
        finally:
            self.load_adapter_state(live)

    def base_weights(self) -> dict:
        """A copy of the base weights under the LoRA layers (what `fold_adapter_state` changes)."""
        return {name: m.base_layer.weight.detach().clone() for name, m in self._lora_modules()}

    def restore_base_weights(self, weights: dict) -> None:
        import torch

        with torch.no_grad():
            for name, m in self._lora_modules():
                m.base_layer.weight.copy_(weights[name])

    @contextmanager
    def adapter_disabled(self):
        """The base weights alone (with whatever was folded into them), for as long as the block runs."""
        with self.model.disable_adapter():
            yield

    def next_token_logprobs(self, token_ids: list[int]):
        """Log-probabilities over the vocabulary at every position of one text (float32, on the CPU)."""
        import torch

        self.model.eval()
        with torch.no_grad():
            ids = torch.tensor([token_ids], device=self.device)
            logits = self.model(input_ids=ids).logits[0, :-1]
            return torch.log_softmax(logits.float(), dim=-1).cpu()

    # ---------------------------------------------------------------------------------------- persistence
    def save_adapter(self, out_dir: str | Path) -> Path:
        """Standard PEFT layout (adapter_config.json + adapter_model.safetensors), checked after writing."""
        from core.adapters import save_peft_adapter

        return save_peft_adapter(self.model, out_dir, expected=self.adapter_state(), base=self.base)

    def load_adapter(self, adapter_dir: str | Path, *, force: bool = False) -> None:
        self.load_adapter_state(self.read_adapter(adapter_dir, force=force))

    def read_adapter(self, adapter_dir: str | Path, *, force: bool = False, run: str | Path | None = None) -> dict:
        """A saved adapter's tensors for this student, refused if it records another base (`core.adapter_base`;
        `run`: the run folder whose provenance names the base of an adapter that records none)."""
        from core.adapter_base import check_base
        from core.adapters import read_adapter_state

        check_base(adapter_dir, self.base, force=force, run=run)
        return read_adapter_state(adapter_dir, self._lora, adapter_name=ADAPTER, base_name=self.settings.path)

    @property
    def base(self):
        """The model under the LoRA (its content hash computed once, when first needed)."""
        if getattr(self, "_base", None) is None:
            from core.adapter_base import Base

            self._base = Base(self.settings.path, self.model.config)
        return self._base


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


def whole_turn(text: str) -> str:
    """A reply read to its end, its lines joined: a preamble line ("The answer is:") keeps the answer after it."""
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


@dataclass
class _DistillRow:
    """A context-distillation example and its cached teacher log-probabilities (None when never read)."""

    example: DistillExample
    teacher: object


def _require_nll(settings: TrainSettings, where: str) -> None:
    """Paths that train on token sequences alone cannot distill: refuse rather than train nll silently."""
    if settings.objective != "nll":
        raise ValueError(f"{where} trains the next-token loss only; objective={settings.objective!r} "
                         "needs the passages: use train_distill (or train_texts with contexts=)")


def _accepts_logits_to_keep(model) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


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


def _batch_plan(examples: list[TrainExample], settings: TrainSettings, seed: int) -> list[list[TrainExample]]:
    """Every step's batch for `epochs` passes over `examples`, reshuffled each epoch by a generator seeded with `seed`
    (one plan shared by `train` and the batched bank's `train_many`, so that both see the same order)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    size = settings.batch_size
    n_batches = math.ceil(len(examples) / size)
    plan = []
    for _ in range(settings.epochs):
        order = torch.randperm(len(examples), generator=gen).tolist()
        plan.extend([examples[i] for i in order[b * size : (b + 1) * size]] for b in range(n_batches))
    return plan
