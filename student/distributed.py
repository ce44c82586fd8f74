"""Student absorption sharded with DeepSpeed ZeRO: LoRA training on one model spread over several processes.

`train_lora_sharded` runs inside every rank of a job started by `torchrun`, the `deepspeed` launcher or
`accelerate launch` (`python -m student.distributed_entry --spec spec.json` is the launchable form, and
`core.launch.launch_sharded(ShardedSpec(...))` starts such a job from Python).  It trains with the Hugging Face
`Trainer` (`deepspeed=`) and a PEFT LoRA on the batches `student.data` builds for the single-process engine, and
writes a standard PEFT adapter that `core.adapters` loads and merges like any other.  With `deepspeed_config=None`
the same function trains without DeepSpeed: the reference that sharded runs are tested against.

Loading: under ZeRO-3 the model is created inside `deepspeed.zero.Init` (transformers does this when a ZeRO-3
`TrainingArguments` is alive), so no rank holds the full set of parameters.  Gathering, saving and verifying the
adapter, the CPU (gloo) setup and the launchers are the ground layer's (`core.launch`), shared with the teacher's
sharded M-step.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from core.errors import UserError
from core.launch import (
    RESULT_FILE,
    barrier,
    held_and_total_numel,
    init_cpu_distributed,
    load_deepspeed_config,
    merge_saved_adapter,
    rank,
    read_spec_fields,
    save_gathered_adapter,
    use_bf16,
    world_size,
    zero_stage,
)


# Fields of the `train` block beyond TrainSettings (core/config.py), whose defaults are used for the rest.
EXTRA_TRAIN_DEFAULTS: dict[str, Any] = {"seed": 0, "grad_accum": 1}


def _lora_settings(lora):
    """`lora` as the project's LoraSettings (r, alpha, dropout, target_modules), from a dict or as given."""
    from core.config import LoraSettings

    if isinstance(lora, LoraSettings):
        return lora
    try:
        return LoraSettings(**dict(lora or {}))
    except TypeError as e:
        raise UserError(f"bad lora settings {lora}: {e}") from None


def _train_settings(train) -> dict[str, Any]:
    """`train` as a plain dict: TrainSettings' fields (with `lr` for learning_rate) plus seed and grad_accum.

    Accepts a TrainSettings or a dict; defaults are TrainSettings' own, so one place defines them.
    """
    from core.config import TrainSettings

    def renamed(d: dict) -> dict:
        d = dict(d)
        if "learning_rate" in d:
            d["lr"] = d.pop("learning_rate")
        return d

    defaults = {**renamed(asdict(TrainSettings())), **EXTRA_TRAIN_DEFAULTS}
    given = renamed(asdict(train)) if isinstance(train, TrainSettings) else dict(train or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise UserError(f"unknown train field(s) {unknown}; known: {sorted(defaults)}")
    refuse_unsupported_objective(given)
    return {**defaults, **given}


SHARDED_OBJECTIVE_ERROR = ("student.train.objective=context_distill is not supported with sharded training "
                           "(student.distributed); use objective=nll or train on one process")


def refuse_unsupported_objective(train) -> None:
    """Sharded training is next-token loss only: a UserError for any other `objective` in `train` (a TrainSettings
    or a dict of its fields). Checked where a spec is made (parent process) and again where a rank reads it."""
    objective = getattr(train, "objective", None) if not isinstance(train, dict) else train.get("objective")
    if objective not in (None, "nll"):
        raise UserError(SHARDED_OBJECTIVE_ERROR)


def train_lora_sharded(
    model_path: str | Path,
    texts: list[str],
    lora: dict | None = None,
    train: dict | None = None,
    deepspeed_config: str | Path | dict | None = "zero2",
    output_dir: str | Path = "runs/sharded",
    *,
    merge: bool = False,
) -> Path:
    """Train a fresh LoRA on `texts`, sharded by DeepSpeed over the ranks of the current job; return the adapter.

    Run on every rank (the launcher sets RANK / WORLD_SIZE / MASTER_*).  `lora`: a LoraSettings or a dict of
    r, alpha, dropout, target_modules.  `train`: a TrainSettings or a dict of its fields, with `lr` for
    learning_rate, plus seed and grad_accum; batch_size is per process, so the global batch is
    batch_size x grad_accum x processes.  Defaults are LoraSettings' and TrainSettings' own.
    `deepspeed_config`: a path, a dict or a name in NAMED_CONFIGS; None trains without DeepSpeed (one process,
    or plain DDP under a launcher), which is the reference the sharded runs are tested against.

    Writes `output_dir/adapter` (PEFT format, verified after writing), `output_dir/train_result.json` and,
    with `merge`, `output_dir/merged` (merged on rank 0 from the saved adapter).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

    from student.data import collate, encode_texts
    from core.lora import wrap_with_lora

    started = time.perf_counter()
    lora_cfg = _lora_settings(lora)
    train_cfg = _train_settings(train)
    ds_config = load_deepspeed_config(deepspeed_config)
    if not texts:
        raise UserError("train_lora_sharded needs at least one training text")
    output_dir = Path(output_dir)
    bf16 = use_bf16()

    warmup, scheduler = float(train_cfg["warmup_ratio"]), str(train_cfg["lr_scheduler"])
    if not 0 <= warmup < 1:
        raise UserError(f"train.warmup_ratio must be in [0, 1), got {warmup}")

    if ds_config is not None and not torch.cuda.is_available():
        init_cpu_distributed()

    # TrainingArguments comes before the model on purpose: with a ZeRO-3 config it registers the global
    # HfDeepSpeedConfig that makes `from_pretrained` build the model inside `deepspeed.zero.Init`, so each
    # rank only ever holds its shard.  `args` must stay alive until training ends (the reference is weak).
    args = TrainingArguments(
        output_dir=str(output_dir / "_trainer"),
        per_device_train_batch_size=int(train_cfg["batch_size"]),
        gradient_accumulation_steps=int(train_cfg["grad_accum"]),
        num_train_epochs=float(train_cfg["epochs"]),
        learning_rate=float(train_cfg["lr"]),
        weight_decay=float(train_cfg["weight_decay"]),
        # transformers 5 reads a float below 1 as a fraction of all steps (warmup_ratio is gone).
        warmup_steps=warmup,
        # HF's "constant" ignores warmup; the engine's "constant" warms up first, as constant_with_warmup does.
        lr_scheduler_type="constant_with_warmup" if scheduler == "constant" and warmup else scheduler,
        max_grad_norm=float(train_cfg["max_grad_norm"] or 0.0),  # None means no clipping; 0 says so to Trainer
        seed=int(train_cfg["seed"]),
        bf16=bf16,
        use_cpu=ds_config is None and not torch.cuda.is_available(),
        deepspeed=ds_config,
        # Reuse the PartialState set up above (only exists on the CPU DeepSpeed path).
        accelerator_config={"use_configured_state": ds_config is not None and not torch.cuda.is_available()},
        gradient_checkpointing=bool(train_cfg["gradient_checkpointing"]),
        # LoRA leaves the inputs of checkpointed blocks without grad; reentrant checkpointing would then drop
        # the LoRA gradients.
        gradient_checkpointing_kwargs={"use_reentrant": False} if train_cfg["gradient_checkpointing"] else None,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    dataset = encode_texts(tokenizer, list(texts), int(train_cfg["max_length"]))

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.bfloat16 if bf16 else torch.float32)
    # Evidence for the "no rank materialises the whole model" claim: what this rank holds right after loading.
    held, total = held_and_total_numel(model)
    model.config.use_cache = False
    if train_cfg["gradient_checkpointing"]:
        model.enable_input_require_grads()
    # The same seed right before the LoRA is created gives every rank (and a single-process run) the same
    # lora_A initialisation, whatever randomness model loading consumed.
    set_seed(int(train_cfg["seed"]))
    model = wrap_with_lora(model, lora_cfg)

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        # Dynamic padding, pads labelled -100: the same batches the single-process engine builds.
        data_collator=partial(collate, pad_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    output = trainer.train()

    # How many LoRA tensors are really split across ranks: ZeRO-3 keeps tensors smaller than
    # stage3_param_persistence_threshold whole on every rank, so tiny adapters may not be sharded at all.
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    partitioned = sum(1 for p in trainable if hasattr(p, "ds_id") and p.ds_tensor.numel() < p.ds_numel)
    adapter_dir = save_gathered_adapter(trainer.model, output_dir / "adapter", tokenizer)
    merged_dir = None
    if merge:
        if rank() == 0:
            merged_dir = merge_saved_adapter(model_path, adapter_dir, output_dir / "merged")
        barrier()
        merged_dir = output_dir / "merged"

    if rank() == 0:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        result = {
            "adapter_dir": str(adapter_dir),
            "merged_dir": str(merged_dir) if merged_dir else None,
            "world_size": world_size(),
            "master_port": os.environ.get("MASTER_PORT"),
            "zero_stage": zero_stage(ds_config),
            "bf16": bf16,
            "param_numel_held_after_load": held,
            "param_numel_total": total,
            "trainable_tensors": len(trainable),
            "trainable_tensors_partitioned": partitioned,
            "global_batch": int(train_cfg["batch_size"]) * int(train_cfg["grad_accum"]) * world_size(),
            "steps": trainer.state.global_step,
            "losses": losses,
            "train_loss": output.training_loss,
            "seconds": round(time.perf_counter() - started, 2),
            "lora": asdict(lora_cfg),
            "train": train_cfg,
        }
        (output_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
    barrier()
    return adapter_dir


@dataclass
class ShardedSpec:
    """Everything one sharded absorption needs; serialised to the JSON that `student.distributed_entry` reads."""

    ENTRY: ClassVar[str] = "student.distributed_entry"

    model_path: str
    output_dir: str
    texts: list[str] = field(default_factory=list)
    lora: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    deepspeed_config: str | dict | None = "zero2"
    merge: bool = False

    def __post_init__(self):
        refuse_unsupported_objective(self.train)

    @classmethod
    def from_file(cls, path: str | Path) -> "ShardedSpec":
        return cls(**read_spec_fields(cls, path))

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path
