"""The teacher's M-step sharded with DeepSpeed ZeRO over several processes.

`run_m_step` (teacher/m_step.py) calls `run_m_step_sharded` when `m_step.deepspeed` is set: it writes an
`MStepSpec` and starts `m_step.nproc` processes with `m_step.launcher`, each running

    python -m teacher.m_step_sharded --spec spec.json

(`torchrun --nproc_per_node=N -m teacher.m_step_sharded --spec spec.json` by hand; the `deepspeed` and
`accelerate` launchers as in `student/distributed_entry.py`).  Every rank builds the M-step's `SFTConfig` with
the DeepSpeed config *first* (under ZeRO-3 the teacher is then loaded partitioned, inside `zero.Init`), loads the
teacher with its LoRA, and trains with the same `sft_lora` (TRL `SFTTrainer`, completion-only loss) as the
in-process M-step.  The LoRA is gathered, written on rank 0 with PEFT (safetensors) and read back: non-empty,
trained, equal to what was gathered (`core.launch.save_gathered_adapter`).  Rank 0 writes
`output_dir/train_result.json`: `sft_lora`'s keys plus world size and ZeRO stage.

`batch_size` is per process: the global batch is batch_size x gradient_accumulation_steps x nproc.
Exit status: 0 done, 2 bad spec or user error (printed as "error: ..."), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from core.config import LoraSettings, MStepSettings, ModelSettings
from core.errors import UserError
from core.launch import (
    RESULT_FILE,
    barrier,
    held_and_total_numel,
    launch_sharded,
    load_deepspeed_config,
    rank,
    read_spec_fields,
    run_then_exit_hard,
    save_gathered_adapter,
    world_size,
    zero_stage,
)
from core.lora import load_with_lora
from teacher.sft import sft_config, sft_lora

ENTRY = "teacher.m_step_sharded"


@dataclass
class MStepSpec:
    """One sharded M-step, as the JSON every rank reads.  `output_dir`: the job's own folder (spec, launch log,
    train_result.json, trainer scratch); `adapter_dir`: where the verified adapter goes."""

    ENTRY: ClassVar[str] = ENTRY

    output_dir: str
    adapter_dir: str
    model: dict = field(default_factory=dict)  # ModelSettings fields of the teacher
    init_adapter: str | None = None  # a saved LoRA to continue; None trains a fresh one
    pairs: list[dict] = field(default_factory=list)
    m_step: dict = field(default_factory=dict)  # MStepSettings fields (lora as a dict)
    seed: int = 0
    use_chat_template: str = "auto"

    @classmethod
    def from_file(cls, path: str | Path) -> "MStepSpec":
        data = read_spec_fields(cls, path)
        try:
            return cls(**data)
        except TypeError as e:
            raise UserError(f"bad spec {path}: {e}") from None

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1, ensure_ascii=False))
        return path

    def model_settings(self) -> ModelSettings:
        try:
            return ModelSettings(**self.model)
        except TypeError as e:
            raise UserError(f"bad teacher model settings in spec: {e}") from None

    def m_step_settings(self) -> MStepSettings:
        fields = dict(self.m_step)
        try:
            if isinstance(fields.get("lora"), dict):
                fields["lora"] = LoraSettings(**fields["lora"])
            return MStepSettings(**fields)
        except TypeError as e:
            raise UserError(f"bad m_step settings in spec: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# Launch side (the process that runs train-teacher).


def run_m_step_sharded(
    model: ModelSettings,
    pairs: list[dict],
    settings: MStepSettings,
    out_dir: str | Path,
    *,
    init_adapter: str | Path | None = None,
    use_chat_template: str = "auto",
    seed: int = 0,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> dict:
    """Run the M-step on `settings.nproc` processes started with `settings.launcher`; return rank 0's result.

    The job's folder (spec, launch.log) sits beside `out_dir` and is removed after success; after a failure it
    is kept and named in the error.  A user error inside the job (e.g. every completion truncated away) is raised
    here as a UserError.
    """
    load_deepspeed_config(settings.deepspeed)  # a bad name or path fails here, before any process starts
    if settings.nproc < 1:
        raise UserError(f"m_step.nproc must be >= 1, got {settings.nproc}")
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.sharded.", dir=out_dir.parent))
    spec = MStepSpec(
        output_dir=str(work),
        adapter_dir=str(out_dir),
        model=asdict(model),
        init_adapter=str(Path(init_adapter).resolve()) if init_adapter else None,
        pairs=[{"prompt": p["prompt"], "completion": p["completion"]} for p in pairs],
        m_step=asdict(settings),
        seed=int(seed),
        use_chat_template=use_chat_template,
    )
    try:
        result = launch_sharded(spec, settings.nproc, settings.launcher, env=env, timeout=timeout)
    except RuntimeError as e:
        log_path = work / "launch.log"
        log = log_path.read_text() if log_path.exists() else ""
        user = [line[len("error: "):] for line in log.splitlines() if line.startswith("error: ")]
        if user:
            raise UserError(f"{user[-1]} (sharded M-step; log: {log_path})") from None
        raise RuntimeError(f"sharded M-step failed; job folder kept at {work}\n{e}") from None
    if not (out_dir / "adapter_model.safetensors").is_file() or not result.get("adapter_verified"):
        raise RuntimeError(f"sharded M-step reported success but left no verified adapter at {out_dir} (see {work})")
    shutil.rmtree(work, ignore_errors=True)
    result.pop("adapter_verified", None)
    return result


# ---------------------------------------------------------------------------------------------------------
# Rank side (every process of the job).


def train_m_step_sharded(spec: MStepSpec) -> dict | None:
    """Train and save on every rank of the current job; rank 0 returns (and writes) the result, others None."""
    import torch

    from core.models import load_tokenizer

    model = spec.model_settings()
    settings = spec.m_step_settings()
    if not spec.pairs:
        raise UserError("the M-step needs at least one (prompt, completion) pair")
    ds_config = load_deepspeed_config(settings.deepspeed)
    if torch.cuda.is_available():
        # Each rank on its own GPU; "auto" / "cuda" would put every rank on GPU 0.
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    model = replace(model, device=device)
    out = Path(spec.output_dir)

    # Before the model: with ZeRO-3 this makes from_pretrained load partitioned (see sft_config); on CPU it also
    # sets up the gloo process group.  `args` stays referenced until training ends.
    args = sft_config(settings, out / "_trainer", device=device, seed=spec.seed, deepspeed_config=ds_config)
    tokenizer = load_tokenizer(model.path, trust_remote_code=model.trust_remote_code)
    # seed: every rank (and the in-process M-step) draws the same fresh LoRA initialisation.
    peft_model = load_with_lora(model, spec.init_adapter, settings.lora, trainable=True, seed=spec.seed)
    held, total = held_and_total_numel(peft_model)
    info = sft_lora(peft_model, tokenizer, spec.pairs, settings, device=device,
                    use_chat_template=spec.use_chat_template, seed=spec.seed, args=args)

    # ZeRO-3 keeps tensors below stage3_param_persistence_threshold whole; count what was really split.
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    partitioned = sum(1 for p in trainable if hasattr(p, "ds_id") and p.ds_tensor.numel() < p.ds_numel)
    # Collective: gather, write on rank 0, read back (non-empty, every lora_B trained, equal to the gathered
    # values), and fail on every rank if that check fails.  Saved without the tokenizer, as the in-process path.
    save_gathered_adapter(peft_model, spec.adapter_dir)
    result = None
    if rank() == 0:
        result = {
            **info,
            "world_size": world_size(),
            "zero_stage": zero_stage(ds_config),
            "global_batch": settings.batch_size * settings.gradient_accumulation_steps * world_size(),
            "param_numel_held_after_load": held,
            "param_numel_total": total,
            "trainable_tensors": len(trainable),
            "trainable_tensors_partitioned": partitioned,
            "master_port": os.environ.get("MASTER_PORT"),
            "adapter_verified": True,
        }
        (out / RESULT_FILE).write_text(json.dumps(result, indent=1))
    shutil.rmtree(out / "_trainer", ignore_errors=True)
    barrier()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {ENTRY}", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="MStepSpec JSON file")
    # Some launchers append --local_rank=N; the rank is read from the environment instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        train_m_step_sharded(MStepSpec.from_file(args.spec))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Only on success: after a failure other ranks may sit in a collective, and a barrier here would hang
    # instead of letting the launcher see this rank exit and stop the job.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank gets here before any tears its group down (STACK.md)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    run_then_exit_hard(main)
