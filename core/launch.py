"""The DeepSpeed launch path both roles use: configs, process setup on CPU, gathered and verified adapter saves, and
starting a job of launched processes from Python.

The student's sharded absorption (`student.distributed`) and the teacher's sharded M-step (`teacher.m_step_sharded`)
each define what one rank trains; everything about getting ranks started, talking, and saving what they trained
without the known ZeRO-3 traps lives here, once (DESIGN.md, "Known traps"):

* ZeRO-3 keeps each parameter as a shard; `state_dict()` then holds empty tensors and a naive `save_pretrained`
  writes an adapter of zero-size tensors that loads without complaint.  Trained LoRA parameters are gathered
  explicitly, written on rank 0 only, read back and compared with what was gathered (`save_gathered_adapter`).
* Merging needs whole weights, so it loads base + the saved (gathered) adapter afresh on one process.
* On a machine without CUDA, accelerate believes it has one process and DeepSpeed asserts on the batch size;
  `init_cpu_distributed` sets accelerate's state up for gloo first (STACK.md, "DeepSpeed on CPU").

A launchable job is a spec dataclass with `output_dir`, `write(path)` and a class attribute `ENTRY` naming the module
every rank runs (`python -m ENTRY --spec spec.json`); that module writes rank 0's result to
`output_dir/train_result.json`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
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


class AdapterSaveError(RuntimeError):
    """A saved adapter is missing, empty, untrained or differs from the weights that were trained."""


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


def init_cpu_distributed() -> None:
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


def use_bf16() -> bool:
    # bf16 where the hardware has it; fp32 on CPU (CPU bf16 matmuls are slow and DeepSpeed's CPU path is fp32).
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def held_and_total_numel(model) -> tuple[int, int]:
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
    if rank() == 0:
        try:
            with atomic_dir(adapter_dir, internal=True) as tmp:
                model.save_pretrained(str(tmp), state_dict=gathered, safe_serialization=True)
                if tokenizer is not None:
                    tokenizer.save_pretrained(str(tmp))
                verify_saved_adapter(tmp, gathered)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            error = f"{type(e).__name__}: {e}"
    if world_size() > 1:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise AdapterSaveError(f"saving the adapter to {adapter_dir} failed on rank 0: {error}")
    return adapter_dir


@contextmanager
def zero3_init_suspended():
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

    kw.setdefault("internal", True)  # into the launched job's own folder
    with zero3_init_suspended():
        return merge_adapter(str(base_model_path), adapter_dir, output_dir, **kw)


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHERS = ("torchrun", "deepspeed", "accelerate", "python")


def launch_command(spec_path: str | Path, nproc: int, launcher: str = "torchrun", port: int | None = None,
                   *, entry: str) -> list[str]:
    """The command line that runs the module `entry` (`--spec spec_path`) on `nproc` local processes.

    The launchable entries are `student.distributed_entry` and `teacher.m_step_sharded`.

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
    spec,
    nproc: int = 2,
    launcher: str = "torchrun",
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    cwd: str | Path | None = None,
    entry: str | None = None,
) -> dict:
    """Write `spec`, run it on `nproc` local processes and return the rank-0 `train_result.json` as a dict.

    `spec` is anything with `output_dir`, `write(path)` and `ENTRY` (student.distributed.ShardedSpec,
    teacher.m_step_sharded.MStepSpec); `entry` (default: the spec's `ENTRY`) is the module every rank runs, reading
    `--spec output_dir/spec.json` and writing its result to `output_dir/train_result.json`.

    The child environment gets OMP_NUM_THREADS=1 (several ranks share the cores) and the repository on
    PYTHONPATH unless `env` says otherwise.  A failed job raises RuntimeError with the tail of its output.
    """
    out = Path(spec.output_dir)
    spec_path = spec.write(out / "spec.json")
    repo = Path(__file__).resolve().parents[1]
    child_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), child_env.get("PYTHONPATH", "")) if p)
    cmd = launch_command(spec_path, nproc, launcher, entry=entry or spec.ENTRY)
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
