"""seal-tt student: absorbing self-edits.

Owns: the absorption engine (`engine`: one resident base, one LoRA reset in memory per self-edit, batched greedy
answers), batched LoRA (`batched`), training batches (`data`), and sharded training under DeepSpeed
(`distributed`, launched as `-m student.distributed_entry`). May import `core` only: never `teacher` (the two roles
meet in `pipeline`).
"""
