"""Generation backends: the teacher samples k self-edits per prompt through one interface.

`TransformersBackend` runs anywhere torch runs and is the tested default. `VLLMBackend` is the same interface over
vLLM for GPU machines; vLLM is imported only when asked for, so nothing else needs it installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from core.config import GenerationSettings, ModelSettings
from core.errors import UserError
from core.models import encode_prompt, load_causal_lm, load_tokenizer, resolve_model_path, stop_token_ids, use_chat


@dataclass
class Sample:
    text: str
    num_tokens: int
    finished: bool  # False when cut by max_new_tokens


class GenerationBackend(Protocol):
    def sample(self, prompts: list[str], settings: GenerationSettings, seeds: list[int]) -> list[list[Sample]]:
        """`settings.num_samples` completions for each prompt; prompt i is sampled under seeds[i]."""
        ...

    def close(self) -> None: ...


class TransformersBackend:
    """Sampling with `model.generate`. Each prompt gets its own seed, so a resumed run redraws identical samples."""

    def __init__(self, model: ModelSettings, *, peft_model=None, tokenizer=None, base_model=None):
        from core.models import adapter_base

        if peft_model is None and base_model is None and (base := adapter_base(model.path)) is not None:
            # A trained teacher given as its LoRA folder: load the base it names, then the adapter on top.
            from dataclasses import replace

            from core.lora import load_with_lora

            peft_model = load_with_lora(replace(model, path=base), model.path, None, trainable=False)
            model = replace(model, path=base)
        self.tokenizer = tokenizer or load_tokenizer(model.path, trust_remote_code=model.trust_remote_code)
        self.model = peft_model or base_model or load_causal_lm(
            model.path,
            dtype=model.dtype,
            device=model.device,
            trust_remote_code=model.trust_remote_code,
            attn_implementation=model.attn_implementation,
        )
        self.device = next(self.model.parameters()).device

    def sample(self, prompts: list[str], settings: GenerationSettings, seeds: list[int]) -> list[list[Sample]]:
        import torch

        if len(seeds) != len(prompts):
            raise ValueError("one seed per prompt")
        chat = use_chat(self.tokenizer, settings.use_chat_template)
        do_sample = settings.temperature > 0
        stops = stop_token_ids(self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.model.eval()
        results = []
        for prompt, seed in zip(prompts, seeds):
            ids = torch.tensor([encode_prompt(self.tokenizer, prompt, chat)], device=self.device)
            torch.manual_seed(int(seed))
            texts: list[Sample] = []
            # All k samples of one prompt in one batch: identical lengths, so no padding and no cross-prompt coupling.
            remaining = settings.num_samples
            while remaining > 0:
                n = min(remaining, max(1, settings.batch_size))
                with torch.no_grad():
                    out = self.model.generate(
                        input_ids=ids.expand(n, -1),
                        attention_mask=torch.ones_like(ids).expand(n, -1),
                        max_new_tokens=settings.max_new_tokens,
                        do_sample=do_sample,
                        temperature=settings.temperature if do_sample else None,
                        top_p=settings.top_p if do_sample else None,
                        top_k=0 if do_sample else None,
                        pad_token_id=pad,
                        eos_token_id=stops,
                    )
                for row in out[:, ids.shape[1]:].tolist():
                    ends = [j for j, t in enumerate(row) if t in stops]
                    finished = bool(ends)
                    if finished:
                        row = row[: ends[0]]
                    while row and row[-1] == pad:
                        row.pop()
                    texts.append(Sample(self.tokenizer.decode(row, skip_special_tokens=True), len(row), finished))
                remaining -= n
            results.append(texts)
        return results

    def close(self) -> None:
        self.model = None


class VLLMBackend:
    """The same sampling on vLLM (GPU). Per-request seeds keep it reproducible."""

    def __init__(self, model: ModelSettings, *, gpu_memory_utilization: float = 0.5, max_lora_rank: int = 64,
                 lora_path: str | None = None):
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise UserError(
                "teacher.backend is 'vllm' but vllm is not installed: on a CUDA machine, pip install 'seal-tt[vllm]'; "
                "or use teacher.backend=transformers"
            ) from None
        from vllm import LLM

        from core.models import adapter_base

        if lora_path is None and (base := adapter_base(model.path)) is not None:
            from dataclasses import replace

            lora_path, model = model.path, replace(model, path=base)
        self.tokenizer = load_tokenizer(model.path, trust_remote_code=model.trust_remote_code)
        self.lora_path = lora_path
        self.llm = LLM(
            model=resolve_model_path(model.path, dtype=model.dtype, device=model.device),
            dtype="auto" if model.dtype == "auto" else model.dtype,
            trust_remote_code=model.trust_remote_code,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_lora=lora_path is not None,
            max_lora_rank=max_lora_rank,
        )

    def sample(self, prompts: list[str], settings: GenerationSettings, seeds: list[int]) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        chat = use_chat(self.tokenizer, settings.use_chat_template)
        requests = [TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, p, chat)) for p in prompts]
        params = [
            SamplingParams(n=settings.num_samples, temperature=settings.temperature, top_p=settings.top_p,
                           max_tokens=settings.max_new_tokens, seed=int(s))
            for s in seeds
        ]
        lora = None
        if self.lora_path:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("teacher", 1, self.lora_path)
        outs = self.llm.generate(requests, params, lora_request=lora, use_tqdm=False)
        return [
            [Sample(c.text, len(c.token_ids), c.finish_reason == "stop") for c in o.outputs] for o in outs
        ]

    def close(self) -> None:
        self.llm = None


def make_backend(kind: str, model: ModelSettings, **kwargs) -> GenerationBackend:
    if kind == "transformers":
        return TransformersBackend(model, **kwargs)
    if kind == "vllm":
        return VLLMBackend(model, **kwargs)
    raise UserError(f"unknown teacher backend {kind!r}; choose transformers or vllm")
