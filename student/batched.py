"""Batched LoRA: several candidate self-edits trained in one pass over the frozen base, one LoRA per row.

Every linear layer with a LoRA computes `base(x) + scale * B_k A_k x` for the row's own bank entry k; each candidate
keeps its own loss normalisation, gradient clipping, AdamW state and schedule, so results equal training the
candidates one by one (to float rounding). Used by `StudentEngine.train_many`; the resident LoRA is never touched.
"""

from __future__ import annotations

import math

from student.data import IGNORE_INDEX

ADAPTER = "default"  # PEFT's name for the engine's one adapter

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
