"""Student absorption sharded with DeepSpeed ZeRO: LoRA training on one model spread over several processes.

`train_lora_sharded` runs inside every rank of a job started by `torchrun`, the `deepspeed` launcher or
`accelerate launch` (`python -m student.distributed_entry --spec spec.json` is the launchable form, and
`launch_sharded` starts such a job from Python).  It trains with the Hugging Face `Trainer` (`deepspeed=`) and
a PEFT LoRA on the batches `student.data` builds for the single-process engine, and writes a standard PEFT
adapter that `core.adapters` loads and merges like any other.  With `deepspeed_config=None` the same
function trains without DeepSpeed: the reference that sharded runs are tested against.

The traps this module exists to avoid (DESIGN.md, "Known traps"):

* ZeRO-3 keeps each parameter as a shard; `state_dict()` then holds empty tensors and a naive
  `save_pretrained` writes an adapter of zero-size tensors that loads without complaint.  Trained LoRA
  parameters are gathered explicitly, written on rank 0 only, read back and compared with what was gathered.
* Merging needs whole weights, so it loads base + the saved (gathered) adapter afresh on one process.
* Loading: under ZeRO-3 the model is created inside `deepspeed.zero.Init` (transformers does this when a
  ZeRO-3 `TrainingArguments` is alive), so no rank holds the full set of parameters.
* On a machine without CUDA, accelerate believes it has one process and DeepSpeed asserts on the batch size;
  `_init_cpu_distributed` sets accelerate's state up for gloo first (STACK.md, "DeepSpeed on CPU").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from core.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"
# Short names a user (or the CLI) may give instead of a path.
NAMED_CONFIGS = {
    "zero2": CONFIG_DIR / "zero2.json",
    "zero3": CONFIG_DIR / "zero3.json",
    "zero3_offload": CONFIG_DIR / "zero3_offload.json",
}
RESULT_FILE = "train_result.json"

# Fields of the `train` block beyond TrainSettings (core/config.py), whose defaults are used for the rest.
EXTRA_TRAIN_DEFAULTS: dict[str, Any] = {"seed": 0, "grad_accum": 1}


class AdapterSaveError(RuntimeError):
    """A saved adapter is missing, empty, untrained or differs from the weights that were trained."""


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
    return {**defaults, **given}


def load_deepspeed_config(config: str | Path | dict | None) -> dict | None:
    """A DeepSpeed config as a fresh dict: from a dict, a JSON path or a name in NAMED_CONFIGS; None stays None."""
    if config is None or isinstance(config, dict):
        # A copy: the Trainer writes resolved "auto" values into the dict it is given.
        return json.loads(json.dumps(config)) if config is not None else None
    path = NAMED_CONFIGS.get(str(config), Path(config))
    if not path.is_file():
        raise UserError(f"DeepSpeed config not found: {config} (names: {sorted(NAMED_CONFIGS)})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"DeepSpeed config {path} is not valid JSON: {e}") from e


def zero_stage(config: dict | None) -> int:
    return int((config or {}).get("zero_optimization", {}).get("stage", 0))


def _init_cpu_distributed() -> None:
    """Make accelerate see a multi-process DeepSpeed job on CPU before TrainingArguments looks.

    Without CUDA, accelerate's backend detection returns none, so it records one process while DeepSpeed
    sees the real world size, and DeepSpeed's batch-size check fails (train_batch_size != micro * 1).  Creating
    the shared PartialState ourselves with backend="gloo" while ACCELERATE_USE_DEEPSPEED is set gives both the
    same world size; TrainingArguments then reuses it through `use_configured_state`.
    """
    from accelerate import PartialState

    if PartialState._shared_state:  # already set up in this process (e.g. a second call)
        return
    for var, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        # A bare `python` run (one process, no launcher) would otherwise make DeepSpeed look for MPI.
        os.environ.setdefault(var, default)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
    _unlink_shm_comm_buffer()


def _unlink_shm_comm_buffer() -> None:
    """Remove the name of this rank's DeepSpeed shared-memory comm buffer once every rank has mapped it.

    DeepSpeed's CPU comm op creates a 66 MB /dev/shm file per rank when LOCAL_SIZE is set (the `deepspeed`
    launcher sets it) and never unlinks it, so every such job leaked RAM-backed files.  By the time
    PartialState returns, each rank has opened every peer's buffer (its init loops until it has); after a
    barrier the names are no longer needed and the mappings stay valid until the process exits.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or "LOCAL_SIZE" not in os.environ:
        return
    dist.barrier()
    name = "deepspeed_allreduce_buffer_{}_{}_{}_{}".format(
        os.getuid(), os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""), dist.get_rank()
    )
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except OSError:
        pass  # no buffer (other DeepSpeed version, ranks on several hosts): nothing leaked


def _use_bf16() -> bool:
    # bf16 where the hardware has it; fp32 on CPU (CPU bf16 matmuls are slow and DeepSpeed's CPU path is fp32).
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _held_and_total_numel(model) -> tuple[int, int]:
    """(elements this rank stores, elements of the whole model); under ZeRO-3 the first is about total / ranks."""
    held = total = 0
    for p in model.parameters():
        if hasattr(p, "ds_numel"):  # a ZeRO-3 parameter: p itself is an empty placeholder, ds_tensor the shard
            held += p.ds_tensor.numel()
            total += p.ds_numel
        else:
            held += p.numel()
            total += p.numel()
    return held, total


def gather_trainable(model) -> dict[str, Any]:
    """Full (unsharded) CPU copies of every trainable parameter, keyed by `named_parameters` name.

    Collective: every rank must call it.  Under ZeRO-3 each parameter is a shard and is gathered with
    `GatheredParameters`; under ZeRO-2 or without DeepSpeed the parameter is already whole and this is a copy.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise AdapterSaveError("the model has no trainable parameters to save (was a LoRA attached?)")
    sharded = [p for _, p in named if hasattr(p, "ds_id")]
    if sharded:
        import deepspeed

        with deepspeed.zero.GatheredParameters(sharded, modifier_rank=None):
            return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in named}
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in named}


def verify_saved_adapter(adapter_dir: str | Path, expected: dict | None = None, *,
                         require_trained: bool = True) -> dict:
    """Read an adapter back; raise `AdapterSaveError` unless it is whole, trained and (optionally) as expected.

    Stricter than `core.adapters.verify_adapter`, which it also runs (file present, values equal to
    `expected`, keyed either way PEFT names them): *every* tensor must be non-empty, since ZeRO-3 keeps
    tensors below its persistence threshold whole and a half-gathered adapter mixes real and empty tensors;
    and with `require_trained` every `lora_B` must be non-zero (PEFT initialises B to zero, so an all-zero B
    means nothing was learned or a stale copy was written).  Returns the loaded tensors.
    """
    import torch
    from safetensors.torch import load_file

    from core.adapters import WEIGHTS, verify_adapter

    path = Path(adapter_dir) / WEIGHTS
    if not path.is_file():
        raise AdapterSaveError(f"no adapter weights at {path}")
    saved = load_file(str(path))
    empty = sorted(k for k, v in saved.items() if v.numel() == 0)
    if not saved or empty:
        raise AdapterSaveError(
            f"{path} holds {len(empty)} empty tensor(s) of {len(saved)}, e.g. {empty[:3]}: partitioned ZeRO-3 "
            "weights were saved without being gathered"
        )
    if require_trained:
        b_keys = [k for k in saved if "lora_B" in k]
        zero = sorted(k for k in b_keys if not torch.any(saved[k] != 0))
        if not b_keys or zero:
            raise AdapterSaveError(
                f"{path}: {len(zero)} of {len(b_keys)} lora_B tensors are all zero (untrained), e.g. {zero[:3]}"
            )
    try:
        verify_adapter(adapter_dir, expected)
    except RuntimeError as e:
        raise AdapterSaveError(str(e)) from e
    return saved


def save_gathered_adapter(model, adapter_dir: str | Path, tokenizer=None) -> Path:
    """Gather the trained LoRA weights, write them on rank 0 and verify the file; collective over all ranks.

    The adapter appears at `adapter_dir` only once verified (written beside it, then renamed).  Every rank
    raises the same `AdapterSaveError` if rank 0's check fails, so the launcher sees the job fail rather than
    one rank hanging in the next collective.
    """
    from core.rundir import atomic_dir

    adapter_dir = Path(adapter_dir)
    gathered = gather_trainable(model)  # collective
    error = None
    if _rank() == 0:
        try:
            with atomic_dir(adapter_dir) as tmp:
                model.save_pretrained(str(tmp), state_dict=gathered, safe_serialization=True)
                if tokenizer is not None:
                    tokenizer.save_pretrained(str(tmp))
                verify_saved_adapter(tmp, gathered)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            error = f"{type(e).__name__}: {e}"
    if _world_size() > 1:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise AdapterSaveError(f"saving the adapter to {adapter_dir} failed on rank 0: {error}")
    return adapter_dir


@contextmanager
def _zero3_init_suspended():
    """While a ZeRO-3 TrainingArguments is alive, `from_pretrained` builds models inside `zero.Init`, a
    collective; suspend that so one rank can load a plain, whole model."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def merge_saved_adapter(base_model_path: str | Path, adapter_dir: str | Path, output_dir: str | Path, **kw) -> Path:
    """`core.adapters.merge_adapter` (base + saved adapter on this one process, merge_and_unload, save),
    safe to call on one rank of a ZeRO-3 job: it only ever sees whole weights, the base from disk and the
    gathered adapter from its verified file."""
    from core.adapters import merge_adapter

    with _zero3_init_suspended():
        return merge_adapter(str(base_model_path), adapter_dir, output_dir, **kw)


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
    from student.engine import wrap_with_lora

    started = time.perf_counter()
    lora_cfg = _lora_settings(lora)
    train_cfg = _train_settings(train)
    ds_config = load_deepspeed_config(deepspeed_config)
    if not texts:
        raise UserError("train_lora_sharded needs at least one training text")
    output_dir = Path(output_dir)
    bf16 = _use_bf16()

    warmup, scheduler = float(train_cfg["warmup_ratio"]), str(train_cfg["lr_scheduler"])
    if not 0 <= warmup < 1:
        raise UserError(f"train.warmup_ratio must be in [0, 1), got {warmup}")

    if ds_config is not None and not torch.cuda.is_available():
        _init_cpu_distributed()

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
    held, total = _held_and_total_numel(model)
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
        if _rank() == 0:
            merged_dir = merge_saved_adapter(model_path, adapter_dir, output_dir / "merged")
        _barrier()
        merged_dir = output_dir / "merged"

    if _rank() == 0:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        result = {
            "adapter_dir": str(adapter_dir),
            "merged_dir": str(merged_dir) if merged_dir else None,
            "world_size": _world_size(),
            "master_port": os.environ.get("MASTER_PORT"),
            "zero_stage": zero_stage(ds_config),
            "bf16": bf16,
            "param_numel_held_after_load": held,
            "param_numel_total": total,
            "trainable_tensors": len(trainable),
            "trainable_tensors_partitioned": partitioned,
            "global_batch": int(train_cfg["batch_size"]) * int(train_cfg["grad_accum"]) * _world_size(),
            "steps": trainer.state.global_step,
            "losses": losses,
            "train_loss": output.training_loss,
            "seconds": round(time.perf_counter() - started, 2),
            "lora": asdict(lora_cfg),
            "train": train_cfg,
        }
        (output_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
    _barrier()
    return adapter_dir


# ---------------------------------------------------------------------------------------------------------
# Launching a job from Python (what the CLI calls).


def read_spec_fields(cls, path: str | Path) -> dict:
    """The JSON of a launch spec, checked against the dataclass `cls`: unreadable or unknown fields are user errors."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read spec {path}: {e}") from e
    unknown = sorted(set(data) - set(cls.__dataclass_fields__))
    if unknown:
        raise UserError(f"unknown spec field(s) {unknown} in {path}")
    return data


@dataclass
class ShardedSpec:
    """Everything one sharded absorption needs; serialised to the JSON that `student.distributed_entry` reads."""

    model_path: str
    output_dir: str
    texts: list[str] = field(default_factory=list)
    lora: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    deepspeed_config: str | dict | None = "zero2"
    merge: bool = False

    @classmethod
    def from_file(cls, path: str | Path) -> "ShardedSpec":
        return cls(**read_spec_fields(cls, path))

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHERS = ("torchrun", "deepspeed", "accelerate", "python")
ENTRY_MODULE = "student.distributed_entry"


def launch_command(spec_path: str | Path, nproc: int, launcher: str = "torchrun", port: int | None = None,
                   *, entry: str = ENTRY_MODULE) -> list[str]:
    """The command line that runs the module `entry` (`--spec spec_path`) on `nproc` local processes.

    `entry` defaults to `student.distributed_entry`; `teacher.m_step_sharded` is the other launchable entry.

    Each launcher is run as `python -m <its module>` with this interpreter, which is what the `torchrun`,
    `deepspeed` and `accelerate` scripts do, so the command works without the virtualenv's bin/ on PATH.
    """
    port = port or free_port()
    py = sys.executable
    entry = [entry, "--spec", str(spec_path)]
    if launcher == "torchrun":
        return [py, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}", "-m", *entry]
    if launcher == "deepspeed":
        # --num_gpus means "processes" to the launcher, also on CPU.  --no_local_rank: the entry reads
        # LOCAL_RANK from the environment rather than being handed a --local_rank argument.
        return [py, "-m", "deepspeed.launcher.runner", f"--num_gpus={nproc}", f"--master_port={port}",
                "--no_local_rank", "--module", *entry]
    if launcher == "accelerate":
        # --multi_gpu selects accelerate's torchrun-based launcher, which is also what starts several CPU
        # processes; without it accelerate starts one process on a machine without GPUs.  DeepSpeed itself
        # is configured by the spec (Trainer's deepspeed=), not by accelerate's --use_deepspeed flags.
        return [py, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={nproc}",
                "--num_machines=1", f"--main_process_port={port}", "--mixed_precision=no", "--dynamo_backend=no",
                "-m", *entry]
    if launcher == "python":
        if nproc != 1:
            raise UserError("launcher 'python' runs one process; use torchrun, deepspeed or accelerate for more")
        return [py, "-m", *entry]
    raise UserError(f"unknown launcher {launcher!r}; choose from {LAUNCHERS}")


def launch_sharded(
    spec: ShardedSpec,
    nproc: int = 2,
    launcher: str = "torchrun",
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    cwd: str | Path | None = None,
    entry: str = ENTRY_MODULE,
) -> dict:
    """Write `spec`, run it on `nproc` local processes and return the rank-0 `train_result.json` as a dict.

    `spec` is anything with `output_dir` and `write(path)` (ShardedSpec, teacher.m_step_sharded.MStepSpec);
    `entry` is the module every rank runs, reading `--spec output_dir/spec.json` and writing its result to
    `output_dir/train_result.json`.

    The child environment gets OMP_NUM_THREADS=1 (several ranks share the cores) and the repository on
    PYTHONPATH unless `env` says otherwise.  A failed job raises RuntimeError with the tail of its output.
    """
    out = Path(spec.output_dir)
    spec_path = spec.write(out / "spec.json")
    repo = Path(__file__).resolve().parents[1]
    child_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), child_env.get("PYTHONPATH", "")) if p)
    cmd = launch_command(spec_path, nproc, launcher, entry=entry)
    proc = subprocess.run(cmd, env=child_env, cwd=str(cwd or repo), capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    (out / "launch.log").write_text(log)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}; last output:\n{log[-4000:]}")
    return json.loads((out / RESULT_FILE).read_text())


def run_then_exit_hard(main) -> None:
    """Run `main()` (returning an exit status) and leave with os._exit, skipping interpreter finalization.

    Used by every launchable entry (student.distributed_entry, teacher.m_step_sharded): gloo's
    worker threads can still hold the last reference to a finished collective's work when the main thread
    finalizes the interpreter, and the rank then aborts (SIGABRT) after all its work was written.  Callers must
    have written and closed everything they produce before `main` returns.
    """
    import logging
    import traceback

    code = 1
    try:
        code = main()
    except SystemExit as e:  # argparse errors and --help
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported here because os._exit skips Python's own report
        traceback.print_exc()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
