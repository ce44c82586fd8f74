"""LoRA helpers both roles use: the PEFT config from `LoraSettings`, wrapping a model, and loading a base model
with a saved or a fresh adapter on it."""

from __future__ import annotations

from pathlib import Path

from core.config import LoraSettings, ModelSettings
from core.errors import UserError
from core.models import load_causal_lm


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


def check_lora_targets(model: ModelSettings, settings: LoraSettings, setting: str) -> None:
    """The LoRA's target modules against the model's module names, on a weightless skeleton built from its config
    (no weights read: seconds for any size), so a mismatch is said before any model runs, not after hours of work.
    `setting`: the config key to name (e.g. student.lora.target_modules)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = _model_config(model)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=model.trust_remote_code)
    try:
        wrapped = wrap_with_lora(skeleton, settings)
    except UserError as err:
        raise UserError(f"{setting}: {err} (model {model.path})") from None
    if not any(p.requires_grad for p in wrapped.parameters()):
        raise UserError(f"{setting}: LoRA on {settings.target_modules} creates no trainable parameters in {model.path}")


def _model_config(model: ModelSettings):
    """The model's config alone; for a GGUF file read from its metadata (nothing converted here)."""
    from transformers import AutoConfig

    from core.gguf import gguf_file

    found = gguf_file(model.path) if model.path else None
    try:
        if found is None:
            return AutoConfig.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
        return AutoConfig.from_pretrained(str(found.parent), gguf_file=found.name)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"cannot read the config of model {model.path!r}: {first}") from None


def load_with_lora(model: ModelSettings, adapter: str | Path | None, lora: LoraSettings | None, *, trainable: bool,
                   seed: int | None = None):
    """A base model with its LoRA: a saved adapter (continued), or a fresh one (`lora` settings).

    With `seed`, a fresh LoRA's initialisation (lora_A) is drawn right after seeding, so it depends on the seed
    alone, not on what loading the base consumed: the same on every rank of a sharded job as in one process.
    """
    base = load_causal_lm(model.path, dtype=model.dtype, device=model.device,
                          trust_remote_code=model.trust_remote_code, attn_implementation=model.attn_implementation)
    if adapter is not None:
        from core.adapter_base import load_peft

        return load_peft(base, adapter, model.path, is_trainable=trainable)
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    return wrap_with_lora(base, lora)
