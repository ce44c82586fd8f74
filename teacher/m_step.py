"""The M-step: supervised finetuning of the teacher on (prompt, selected self-edit) pairs, with TRL and LoRA.

The loss is on the completion only (TRL's prompt-completion format). The prompt is rendered exactly as the
generation backend renders it (the chat template's user turn plus generation prompt, or the raw text), so the teacher
learns in the same format it samples in.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from pipeline.config import MStepSettings, ModelSettings
from pipeline.errors import UserError
from pipeline.models import load_causal_lm, load_tokenizer, pick_device, use_chat
from student.adapters import save_peft_adapter


def sft_dataset(pairs: list[dict], tokenizer, use_chat_template: str):
    from datasets import Dataset

    if use_chat(tokenizer, use_chat_template):
        rows = [
            {"prompt": [{"role": "user", "content": p["prompt"]}],
             "completion": [{"role": "assistant", "content": p["completion"]}]}
            for p in pairs
        ]
    else:
        rows = [{"prompt": p["prompt"], "completion": p["completion"]} for p in pairs]
    return Dataset.from_list(rows)


def load_teacher(model: ModelSettings, adapter: str | Path | None, lora, *, trainable: bool):
    """The teacher's base with its LoRA: a saved adapter (continued), or a fresh one (`lora` settings)."""
    from peft import PeftModel

    from student.engine import wrap_with_lora

    base = load_causal_lm(model.path, dtype=model.dtype, device=model.device,
                          trust_remote_code=model.trust_remote_code, attn_implementation=model.attn_implementation)
    if adapter is not None:
        return PeftModel.from_pretrained(base, str(adapter), is_trainable=trainable)
    return wrap_with_lora(base, lora)


def run_m_step(
    model: ModelSettings,
    pairs: list[dict],
    settings: MStepSettings,
    out_dir: str | Path,
    *,
    init_adapter: str | Path | None = None,
    use_chat_template: str = "auto",
    seed: int = 0,
) -> dict:
    """Train the teacher's LoRA on `pairs` ({"prompt", "completion"}) and save the adapter to `out_dir`."""
    if not pairs:
        raise ValueError("the M-step needs at least one (prompt, completion) pair")
    tokenizer = load_tokenizer(model.path, trust_remote_code=model.trust_remote_code)
    peft_model = load_teacher(model, init_adapter, settings.lora, trainable=True)
    info = sft_lora(peft_model, tokenizer, pairs, settings, device=pick_device(model.device),
                    use_chat_template=use_chat_template, seed=seed)
    trained = {n: p.detach().cpu().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    save_peft_adapter(peft_model, out_dir, expected=trained)
    info["init"] = str(init_adapter) if init_adapter else "fresh"
    return info


def sft_lora(peft_model, tokenizer, pairs: list[dict], settings: MStepSettings, *, device: str = "cpu",
             use_chat_template: str = "auto", seed: int = 0) -> dict:
    """TRL `SFTTrainer` over a LoRA-wrapped model, completion-only loss; trains `peft_model` in place."""
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    on_gpu = device.startswith("cuda")
    work = Path(tempfile.mkdtemp(prefix="m_step_"))
    start = time.perf_counter()
    try:
        args = SFTConfig(
            output_dir=str(work),
            num_train_epochs=settings.epochs,
            learning_rate=settings.learning_rate,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            lr_scheduler_type=settings.lr_scheduler if settings.lr_scheduler != "constant" else "constant_with_warmup",
            warmup_steps=settings.warmup_ratio,  # a float < 1 is a ratio of the total steps
            max_length=settings.max_length,
            completion_only_loss=True,
            gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if settings.gradient_checkpointing else None,
            bf16=on_gpu and _bf16_ok(),
            use_cpu=not on_gpu and settings.deepspeed is None,
            deepspeed=settings.deepspeed,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=peft_model,
            args=args,
            train_dataset=sft_dataset(pairs, tokenizer, use_chat_template),
            processing_class=tokenizer,
        )
        if len(trainer.train_dataset) == 0:
            raise UserError(
                f"every M-step example lost its completion to truncation at m_step.max_length={settings.max_length}; "
                "raise m_step.max_length"
            )
        trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout; the losses go to m_step.json
        result = trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        return {
            "pairs": len(pairs),
            "steps": int(result.global_step),
            "train_loss": float(result.training_loss),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "seconds": round(time.perf_counter() - start, 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def merge_teacher(model: ModelSettings, adapter: str | Path, out_dir: str | Path) -> Path:
    from student.adapters import merge_adapter

    return merge_adapter(model.path, adapter, out_dir, dtype=model.dtype, trust_remote_code=model.trust_remote_code)


def _bf16_ok() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def check_deepspeed_config(path: str | None) -> None:
    if path is not None and not Path(path).is_file():
        raise UserError(f"m_step.deepspeed config not found: {path}")
