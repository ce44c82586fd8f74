"""Batched LoRA: several candidate self-edits trained in one pass over the frozen base, one LoRA per row.

Every linear layer with a LoRA computes `base(x) + scale * B_k A_k x` for the row's own bank entry k; each candidate
keeps its own loss normalisation, gradient clipping, AdamW state and schedule, so results equal training the
candidates one by one (to float rounding). `BatchedLoraBank(engine)` trains and answers with them over a
`StudentEngine`'s model; the engine's resident LoRA is never touched. No workflow uses it yet; benchmarks/inner_loop.py
times it against one-by-one training.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager

from core.config import TrainSettings
from student.data import IGNORE_INDEX, TrainExample, collate
from student.engine import ADAPTER, StudentEngine, TrainStats, _batch_plan, _require_nll, _schedule, first_line


class BatchedLoraBank:
    """Several LoRAs trained together over one engine's frozen base, and answered with, beside its resident LoRA.

    >>> bank = BatchedLoraBank(engine)
    >>> stats = bank.train_texts_many([texts_a, texts_b], TrainSettings(), seeds=[0, 1])
    >>> bank.answer_many([questions_a, questions_b], qa_prompt="Q: {question}\\nA:")
    >>> engine.load_adapter_state(bank.bank_state(1))   # install one candidate as the engine's own LoRA
    """

    def __init__(self, engine: StudentEngine):
        self.engine = engine
        self._bank: _LoraBank | None = None
        # What one extra forward+backward pass costs in train_many, in tokens of compute. On an H100 a pass of a 7B
        # model reads its weights twice (~10 ms), about what ~250 tokens of matmuls take; on a CPU with a tiny model
        # Python overhead dominates and the same order holds.
        self.pass_overhead_tokens = 256
        # A memory guard: no train_many pass holds more padded tokens than this (one long row always may).
        self.max_pass_tokens: int | None = None

    def train_many(
        self, example_sets: list[list[TrainExample]], settings: TrainSettings, seeds: list[int] | None = None
    ) -> list[TrainStats]:
        """Train one LoRA per example set, all of them in the same forward and backward passes over the frozen base.

        Scoring candidate self-edits means many small trainings on one base; alone, each step of each is a batch of
        one short sequence, which leaves a GPU waiting on weight reads and kernel launches. Here every step stacks
        one batch from each unfinished edit and applies each row's own LoRA with batched matmuls.

        Edit k starts from `engine.initial_state(seeds[k])`, sees its examples in the order `engine.train(...,
        seed=seeds[k])` uses, and has its own loss normalisation, gradient-norm clip, AdamW moments, step count and
        learning-rate schedule, so its result equals `engine.reset(seeds[k]); engine.train(example_sets[k], settings,
        seeds[k])` up to
        floating-point summation order (exactly so only with LoRA dropout 0, the default: dropout masks are drawn
        differently). The trained LoRAs stay in a bank beside the resident one, which is left untouched:
        `answer_many` answers with them, `bank_state(k)` returns edit k's tensors for `load_adapter_state`.
        `TrainStats.seconds` is the shared wall time divided evenly.
        """
        import torch

        engine = self.engine
        if not example_sets or any(not examples for examples in example_sets):
            raise ValueError("every self-edit needs at least one training example")
        _require_nll(settings, "BatchedLoraBank.train_many")
        seeds = list(range(len(example_sets))) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != len(example_sets):
            raise ValueError(f"{len(example_sets)} example sets but {len(seeds)} seeds")
        start = time.perf_counter()
        count = len(example_sets)
        self._bank = bank = _LoraBank(engine._lora_modules(), [engine.initial_state(s) for s in seeds])
        plans = [_batch_plan(examples, settings, seed) for examples, seed in zip(example_sets, seeds)]
        schedules = [_schedule(settings, max(1, len(plan))) for plan in plans]
        optimizer = _BankAdamW(bank, settings.learning_rate, settings.weight_decay)
        stats = [TrainStats() for _ in range(count)]
        step_losses = []  # (active edits, their losses as one device tensor) per step
        pad = engine.tokenizer.pad_token_id
        torch.manual_seed(seeds[0])  # dropout, when there is any
        attention_scale = _attention_scale(engine.model.config)
        with engine._training_mode(settings), self._routing(bank) as route:
            for step in range(max(len(plan) for plan in plans)):
                active = [k for k in range(count) if step < len(plans[k])]
                rows, owner = [], []
                for k in active:
                    rows += plans[k][step]
                    owner += [k] * len(plans[k][step])
                # Each edit's loss is a mean over its own tokens in this step, whichever pass its rows land in.
                targets = torch.zeros(count)
                for k, ex in zip(owner, rows):
                    targets[k] += sum(label != IGNORE_INDEX for label in ex.labels[1:])
                targets = targets.clamp(min=1).to(engine.device, non_blocking=True)
                losses = torch.zeros(count, device=engine.device)
                for part in _length_buckets([len(r.input_ids) for r in rows], self.pass_overhead_tokens,
                                            attention_scale, self.max_pass_tokens):
                    batch = collate([rows[i] for i in part], pad)
                    part_owner = [owner[i] for i in part]
                    for k, n in zip(part_owner, batch["attention_mask"].sum(1).tolist()):
                        stats[k].tokens += n
                    route.set(part_owner)
                    logits = engine.model(
                        input_ids=batch["input_ids"].to(engine.device, non_blocking=True),
                        attention_mask=batch["attention_mask"].to(engine.device, non_blocking=True),
                    ).logits
                    part_losses = _per_edit_loss_sums(
                        logits, batch["labels"].to(engine.device, non_blocking=True),
                        torch.tensor(part_owner, device=engine.device), count,
                    ) / targets
                    with warnings.catch_warnings():
                        # The bank's per-module views are strided into one [edits, params] buffer on purpose (one
                        # optimizer op for all); their gradients accumulate in place into the matching views.
                        warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout")
                        part_losses.sum().backward()
                    losses += part_losses.detach()
                optimizer.step(active, [schedules[k](stats[k].steps) for k in active], settings.max_grad_norm)
                for k in active:
                    stats[k].steps += 1
                step_losses.append((active, losses))
        history = torch.stack([losses for _, losses in step_losses]).float().cpu().tolist() if step_losses else []
        for (active, _), values in zip(step_losses, history):
            for k in active:
                stats[k].losses.append(values[k])
        elapsed = time.perf_counter() - start
        for s in stats:
            s.seconds = elapsed / count
        return stats

    def train_texts_many(
        self, text_sets: list[list[str]], settings: TrainSettings, seeds: list[int] | None = None
    ) -> list[TrainStats]:
        return self.train_many([self.engine.encode(texts, settings.max_length) for texts in text_sets], settings, seeds)

    def bank_state(self, index: int) -> dict:
        """Edit `index`'s LoRA from the last `train_many`, keyed like `adapter_state()` (on the CPU)."""
        if self._bank is None:
            raise ValueError("no batched adapters: call train_many first")
        return self._bank.state(index)

    def answer_many(self, question_sets: list[list[str]], *, qa_prompt: str, use_chat_template="auto",
                    max_new_tokens=64, batch_size=16) -> list[list[str]]:
        """Answers per edit of the last `train_many`, question set k by LoRA k, all edits' rows batched together."""
        if self._bank is None:
            raise ValueError("no batched adapters: call train_many first")
        if len(question_sets) != self._bank.count:
            raise ValueError(f"{len(question_sets)} question sets for {self._bank.count} trained adapters")
        prompts = [qa_prompt.format(question=q) for qs in question_sets for q in qs]
        adapters = [k for k, qs in enumerate(question_sets) for _ in qs]
        raw = self.generate(self.engine.encode_prompts(prompts, use_chat_template), adapters,
                            max_new_tokens=max_new_tokens, batch_size=batch_size)
        out, pos = [], 0
        for qs in question_sets:
            out.append([first_line(r) for r in raw[pos : pos + len(qs)]])
            pos += len(qs)
        return out


    def generate(self, prompt_ids: list[list[int]], adapters: list[int], *, max_new_tokens: int = 64,
                 batch_size: int = 16, stop_at_newline=True) -> list[str]:
        """`engine.generate` with the LoRAs of the last `train_many` instead of the resident one: prompt i is
        answered by bank row `adapters[i]`. The work each answer needed is in `engine.last_generation`."""
        if self._bank is None:
            raise ValueError("generate(adapters=...) needs train_many first")
        if len(adapters) != len(prompt_ids):
            raise ValueError(f"{len(adapters)} adapter indices for {len(prompt_ids)} prompts")
        return self.engine.generate(prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                    stop_at_newline=stop_at_newline, routing=self._routed(adapters))

    @contextmanager
    def _routed(self, adapters: list[int]):
        """Each generate batch's rows answered by their own bank rows (given the batch's prompt indices)."""
        with self._routing(self._bank) as route:
            yield lambda idx: route.set([adapters[i] for i in idx])

    @contextmanager
    def _routing(self, bank: "_LoraBank"):
        """Swap each LoRA layer's forward for one that applies bank row `route.idx[i]` to batch row i."""
        route = _Route(self.engine.device)
        for name, module in self.engine._lora_modules():
            module.forward = _routed_forward(module, *bank.views[name], route)
        try:
            yield route
        finally:
            for _, module in self.engine._lora_modules():
                module.__dict__.pop("forward", None)



def _per_edit_loss_sums(logits, labels, owner, count: int):
    """Summed next-token loss per edit over its unmasked tokens (row i belongs to edit `owner[i]`)."""
    import torch
    import torch.nn.functional as F

    vocab = logits.shape[-1]
    target = labels[:, 1:]
    per_token = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, vocab), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(target.shape)
    return torch.zeros(count, device=logits.device).index_add_(0, owner, per_token.sum(1))


def _attention_scale(config) -> float:
    """The sequence length at which a row's attention costs as much as its weight matmuls (per token)."""
    from core.shapes import Dims

    try:
        dims = Dims.from_config(config)
    except AttributeError:
        return float("inf")
    return dims.linear_params / (dims.layers * dims.heads * dims.head_dim)


def _length_buckets(lengths: list[int], overhead: float, attention_scale: float,
                    max_tokens: int | None = None) -> list[list[int]]:
    """Split one step's rows into passes so that padding does not cost more than an extra pass would.

    Rows from different edits have unrelated lengths (a passage among one-line implications); padded together, the
    short rows pay the long one's length, and its length squared in attention. A pass costs `overhead` token-
    equivalents (weight reads, launches, Python) plus, per row, its padded length L times (1 + L / attention_scale).
    Minimised exactly over contiguous groups of the rows sorted by length, none above `max_tokens` padded tokens
    unless it is a single row.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = sorted_lengths[j - 1]
        per_row = width * (1 + width / attention_scale)
        for i in range(j):
            if max_tokens is not None and j - i > 1 and (j - i) * width > max_tokens:
                continue
            cost = best[i] + overhead + (j - i) * per_row
            if cost < best[j]:
                best[j], cut[j] = cost, i
    parts, j = [], n
    while j > 0:
        parts.append(order[cut[j] : j])
        j = cut[j]
    return parts[::-1]


class _LoraBank:
    """K LoRAs for the same layers in one [K, D] buffer, row k holding edit k.

    One buffer, not one tensor per layer, so that clipping and AdamW are a handful of whole-buffer operations
    rather than a dozen kernel launches per layer per step. Each layer's A and B are [K, r, in] and [K, out, r]
    views into it (strided by D), set up as leaves whose gradients are views into a matching gradient buffer.
    """

    def __init__(self, modules: list[tuple[str, object]], states: list[dict]):
        import torch

        self.count = len(states)
        self.names = {}  # module name -> (A parameter name, B parameter name)
        shapes = []
        for name, module in modules:
            a_name, b_name = f"{name}.lora_A.{ADAPTER}.weight", f"{name}.lora_B.{ADAPTER}.weight"
            self.names[name] = (a_name, b_name)
            shapes.append((name, module.lora_A[ADAPTER].weight.shape, module.lora_B[ADAPTER].weight.shape))
        ref = modules[0][1].lora_A[ADAPTER].weight
        width = sum(a.numel() + b.numel() for _, a, b in shapes)
        self.flat = torch.zeros(self.count, width, device=ref.device, dtype=ref.dtype)
        self.grad = torch.zeros_like(self.flat)
        self.views: dict[str, tuple] = {}
        self._slices: dict[str, tuple[slice, tuple]] = {}
        offset = 0
        for name, a_shape, b_shape in shapes:
            pair = []
            for pname, shape in zip(self.names[name], (a_shape, b_shape)):
                cols = slice(offset, offset + shape.numel())
                offset = cols.stop
                view = self.flat[:, cols].view(self.count, *shape)
                view.requires_grad_(True)
                view.grad = self.grad[:, cols].view(self.count, *shape)
                self._slices[pname] = (cols, tuple(shape))
                pair.append(view)
            self.views[name] = tuple(pair)
        with torch.no_grad():
            for k, state in enumerate(states):
                for pname, (cols, _) in self._slices.items():
                    self.flat[k, cols] = state[pname].reshape(-1).to(self.flat.device, self.flat.dtype)

    def state(self, index: int) -> dict:
        if not 0 <= index < self.count:
            raise IndexError(f"adapter {index} of {self.count}")
        return {
            pname: self.flat[index, cols].detach().reshape(shape).to("cpu", copy=True)
            for pname, (cols, shape) in self._slices.items()
        }


class _BankAdamW:
    """torch.optim.AdamW's update (decoupled weight decay), with a learning rate and step count per bank row.

    Rows not in `active` keep parameters and moments unchanged, as an edit that has finished its epochs would.
    """

    def __init__(self, bank: _LoraBank, lr: float, weight_decay: float, betas=(0.9, 0.999), eps=1e-8):
        import torch

        self.bank, self.lr, self.weight_decay, self.betas, self.eps = bank, lr, weight_decay, betas, eps
        self.exp_avg = torch.zeros_like(bank.flat)
        self.exp_avg_sq = torch.zeros_like(bank.flat)
        self.steps = [0] * bank.count

    def step(self, active: list[int], factors: list[float], max_grad_norm: float | None) -> None:
        import torch

        beta1, beta2 = self.betas
        param, grad = self.bank.flat, self.bank.grad
        with torch.no_grad():
            if max_grad_norm:
                # As clip_grad_norm_ per edit: inactive rows have zero gradients and are left as they are.
                norms = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
                grad.mul_((max_grad_norm / (norms + 1e-6)).clamp(max=1.0))
            for k in active:
                self.steps[k] += 1
            lr = [self.lr * f for f in factors]
            bias1 = [1 - beta1 ** self.steps[k] for k in active]
            bias2_sqrt = [math.sqrt(1 - beta2 ** self.steps[k]) for k in active]

            def column(values):
                return torch.tensor(values, dtype=param.dtype).view(-1, 1).to(param.device, non_blocking=True)

            everyone = len(active) == self.bank.count
            rows = None if everyone else torch.tensor(active, device=param.device)
            tensors = (param, self.exp_avg, self.exp_avg_sq, grad)
            p, m, v, g = tensors if everyone else (t.index_select(0, rows) for t in tensors)
            if self.weight_decay:
                p.mul_(column([1 - x * self.weight_decay for x in lr]))
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / column(bias2_sqrt)).add_(self.eps)
            p.sub_((column([x / b for x, b in zip(lr, bias1)]) * m) / denom)
            if not everyone:
                for full, part in ((param, p), (self.exp_avg, m), (self.exp_avg_sq, v)):
                    full.index_copy_(0, rows, part)
            grad.zero_()


class _Route:
    """Which bank row each batch row uses; gathered rows are reused across decoding steps when nothing trains."""

    def __init__(self, device):
        self.device = device
        self.idx = None
        self.identity = False
        self._cache: dict[int, tuple] = {}

    def set(self, rows: list[int]) -> None:
        import torch

        self.idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.identity = None  # decided against the bank size on first use
        self._rows = list(rows)
        self._cache.clear()

    def rows(self, a, b):
        import torch

        if self.identity is None:
            self.identity = self._rows == list(range(a.shape[0]))
        if self.identity:
            return a, b
        if torch.is_grad_enabled():
            return a.index_select(0, self.idx), b.index_select(0, self.idx)
        key = id(a)
        if key not in self._cache:
            self._cache[key] = (a.index_select(0, self.idx), b.index_select(0, self.idx))
        return self._cache[key]


def _routed_forward(module, a, b, route: _Route):
    """PEFT's LoRA forward (base + B(A(dropout(x))) * scaling, computed in the LoRA's dtype), one LoRA per row."""
    import torch

    base = module.base_layer
    dropout = module.lora_dropout[ADAPTER]
    scaling = module.scaling[ADAPTER]

    def forward(x, *args, **kwargs):
        result = base(x, *args, **kwargs)
        a_rows, b_rows = route.rows(a, b)
        h = dropout(x.to(a_rows.dtype))
        delta = torch.bmm(torch.bmm(h, a_rows.transpose(1, 2)), b_rows.transpose(1, 2)) * scaling
        return (result + delta).to(result.dtype)

    return forward
