"""Supervised finetuning of the teacher on (prompt, completion) pairs with TRL and LoRA: what one M-step trains.

The loss is on the completion only (TRL's prompt-completion format). The prompt is rendered exactly as the
generation backend renders it (the chat template's user turn plus generation prompt, or the raw text), so the teacher
learns in the same format it samples in. `teacher.m_step` runs it in this process, `teacher.m_step_sharded` on every
rank of a DeepSpeed job.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from core.config import MStepSettings, ModelSettings
from core.errors import UserError
from core.launch import init_cpu_distributed, load_deepspeed_config, use_bf16
from core.models import use_chat


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


def sft_config(settings: MStepSettings, output_dir: str | Path, *, device: str = "cpu", seed: int = 0,
               deepspeed_config: dict | None = None):
    """The `SFTConfig` of the M-step; with `deepspeed_config` (a loaded DeepSpeed config) it trains under ZeRO.

    Build it *before* loading the model on the sharded path: with a ZeRO-3 config it registers transformers'
    global HfDeepSpeedConfig, so `from_pretrained` loads each rank's partition only (`zero.Init`); the caller
    must keep the returned object alive until training ends (transformers holds it by a weak reference).
    """
    from trl import SFTConfig

    on_gpu = device.startswith("cuda")
    cpu_deepspeed = deepspeed_config is not None and not on_gpu
    if cpu_deepspeed:
        # accelerate finds no accelerator and would assume one process (STACK.md, "DeepSpeed on CPU").
        init_cpu_distributed()
    return SFTConfig(
        output_dir=str(output_dir),
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
        bf16=on_gpu and use_bf16(),
        use_cpu=not on_gpu and deepspeed_config is None,
        deepspeed=deepspeed_config,
        # Reuse the gloo PartialState set up above (CPU DeepSpeed only; elsewhere accelerate makes its own).
        accelerator_config={"use_configured_state": cpu_deepspeed},
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def sft_lora(peft_model, tokenizer, pairs: list[dict], settings: MStepSettings, *, device: str = "cpu",
             use_chat_template: str = "auto", seed: int = 0, args=None) -> dict:
    """TRL `SFTTrainer` over a LoRA-wrapped model, completion-only loss; trains `peft_model` in place.

    `args`: an `SFTConfig` from `sft_config`, built before the model was loaded (the sharded path); by default
    one is built here from `settings` (and `settings.deepspeed`, loaded, if set).
    """
    from transformers import PrinterCallback
    from trl import SFTTrainer

    work = Path(tempfile.mkdtemp(prefix="m_step_"))
    start = time.perf_counter()
    try:
        if args is None:
            args = sft_config(settings, work, device=device, seed=seed,
                              deepspeed_config=load_deepspeed_config(settings.deepspeed))
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
            "losses": losses,
            "seconds": round(time.perf_counter() - start, 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_prompts_fit(tokenizer, prompts: list[str], settings: MStepSettings, use_chat_template: str) -> None:
    """Every M-step prompt leaves room for a completion under m_step.max_length: TRL cuts each example at its end,
    so a prompt that fills it leaves nothing to learn. Checked from the tokenizer alone, before the E-step."""
    from core.models import encode_prompt

    chat = use_chat(tokenizer, use_chat_template)
    over = [n for n in (len(encode_prompt(tokenizer, p, chat)) for p in prompts) if n >= settings.max_length]
    if over:
        raise UserError(
            f"m_step.max_length={settings.max_length} leaves no room for a self-edit after the teacher's prompt of "
            f"{len(over)} of {len(prompts)} training contexts (the longest: {max(over)} tokens); "
            "raise m_step.max_length"
        )


def merge_teacher(model: ModelSettings, adapter: str | Path, out_dir: str | Path) -> Path:
    from core.adapters import merge_adapter

    return merge_adapter(model.path, adapter, out_dir, dtype=model.dtype, trust_remote_code=model.trust_remote_code,
                         internal=True)


def check_deepspeed_config(path: str | None) -> None:
    """`m_step.deepspeed` names a shipped config (zero2, zero3, zero3_offload) or a readable JSON file."""
    if path is None:
        return
    try:
        load_deepspeed_config(path)
    except UserError as e:
        raise UserError(f"m_step.deepspeed: {e}") from None
