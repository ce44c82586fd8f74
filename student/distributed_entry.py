"""Launchable form of `student.distributed.train_lora_sharded`: one spec file, run on every rank.

From the repository root (or with seal-tt installed), N processes on this machine:

    torchrun --nproc_per_node=N -m student.distributed_entry --spec spec.json
    deepspeed --num_gpus=N --no_local_rank --module student.distributed_entry --spec spec.json
    accelerate launch --multi_gpu --num_processes=N -m student.distributed_entry --spec spec.json

(`--multi_gpu` is what makes accelerate start N processes, also on a machine without GPUs; DeepSpeed is
configured by the spec, not by accelerate's own DeepSpeed flags.)  On CPU, set OMP_NUM_THREADS so that the
ranks do not oversubscribe the cores, and TORCH_EXTENSIONS_DIR to keep the comm op DeepSpeed compiles on its
first run (g++ and ninja needed).  A single process needs no launcher: `python -m student.distributed_entry`.

The spec is `student.distributed.ShardedSpec` as JSON:

    {"model_path": "...", "output_dir": "...", "texts": ["...", ...],
     "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
     "train": {"lr": 1e-3, "epochs": 1, "batch_size": 1, "seed": 0, "max_length": 512},
     "deepspeed_config": "zero3", "merge": false}

`deepspeed_config` is a name (zero2, zero3, zero3_offload: configs/deepspeed/), a path, an inline object, or
null for no DeepSpeed.  Rank 0 writes output_dir/adapter (verified), output_dir/train_result.json and, with
merge, output_dir/merged.  Exit status: 0 done, 2 bad spec, 1 anything else.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m student.distributed_entry", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="ShardedSpec JSON file")
    # Some launchers append --local_rank=N; the rank is read from the environment instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from core.errors import UserError
    from student.distributed import ShardedSpec, train_lora_sharded

    try:
        spec = ShardedSpec.from_file(args.spec)
        train_lora_sharded(
            spec.model_path,
            spec.texts,
            spec.lora,
            spec.train,
            spec.deepspeed_config,
            spec.output_dir,
            merge=spec.merge,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Only on success: after a failure the other ranks may sit in a collective, and a barrier here would hang
    # instead of letting the launcher see this rank exit and stop the job.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # All ranks reach this point before any tears its group down (STACK.md: avoids an abort at exit).
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _run_then_exit_hard() -> None:
    """Run `main` and leave with os._exit: see `core.launch.run_then_exit_hard` for why (a gloo abort at
    interpreter shutdown, ~1 run in 12 on a loaded machine, after all the work was written)."""
    from core.launch import run_then_exit_hard

    run_then_exit_hard(main)


if __name__ == "__main__":
    _run_then_exit_hard()
