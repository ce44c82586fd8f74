"""Checkpoints of a long absorption: LoRA values, AdamW moments, the step reached, the losses and the RNG state.

A joint absorption of many documents into a real model runs for an hour on a CPU; a kill must not send it back to
step 0. `StudentEngine.train(..., checkpoint=TrainCheckpoint(folder))` saves now and then (every `every_seconds`,
or every `every_steps` optimizer steps) and, started again on the same examples, settings and seed, continues from
the last save to the very values an uninterrupted run reaches: the batch plan is a function of the seed, and
everything else that the next step depends on is in the checkpoint.

Files (safetensors and JSON only; nothing is unpickled): `state.safetensors` and `state.json`, replaced together in
one rename of their folder. A checkpoint made for other examples, settings or seed, or for another student (another
base model, dtype or LoRA setting: `--force` with another student of the same shape must not resume the old optimizer
state) is ignored (its fingerprint differs) and overwritten by the new run. Checkpoints written before the student
was part of the fingerprint (issue 22) are such: that run restarts its training from step 0, to the same result.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.rundir import atomic_dir

STATE = "state.safetensors"
META = "state.json"


@dataclass
class TrainCheckpoint:
    folder: Path
    every_seconds: float = 600.0
    every_steps: int | None = None  # when set, also save after every this many steps (tests use 1)
    resumed_from: int = field(default=0, init=False)  # the step a resumed run continued from (0: a fresh start)
    _last: float = field(default_factory=time.monotonic, init=False)

    def __post_init__(self):
        self.folder = Path(self.folder)

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return time.monotonic() - self._last >= self.every_seconds


def fingerprint(examples, settings, seed: int, *, contexts: list[str] | None = None, student: dict | None = None) -> str:
    """What the training run is: its token ids, labels, settings and seed (and, for context distillation, both
    sequences of every example and the passages they were made from), and `student`: what is trained
    (`StudentEngine.identity()`: the base model's content, its dtype, the LoRA settings)."""
    h = hashlib.sha256()
    # How often it saves is not part of what is trained.
    fields = {k: v for k, v in asdict(settings).items() if not k.startswith("checkpoint_")}
    if fields.get("objective", "nll") == "nll":
        # The distillation settings do not touch an nll run: a checkpoint saved before they existed still matches.
        fields.pop("objective", None)
        fields.pop("distill_weight", None)
    head = {"settings": fields, "seed": int(seed), "n": len(examples)}
    if contexts is not None:
        head["contexts"] = list(contexts)
    if student is not None:
        head["student"] = student
    h.update(json.dumps(head, sort_keys=True).encode())
    for ex in examples:
        if hasattr(ex, "teacher_ids"):  # student.data.DistillExample
            h.update(json.dumps([list(ex.student_ids), list(ex.teacher_ids), int(ex.n_target)]).encode())
        else:
            h.update(json.dumps([list(ex.input_ids), list(ex.labels)]).encode())
    return h.hexdigest()


def save(ckpt: TrainCheckpoint, *, key: str, step: int, lora: dict, optimizer, losses: list[float], tokens: int) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {f"lora.{name}": p.detach().to("cpu", copy=True).contiguous() for name, p in lora.items()}
    names = list(lora)
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        state = optimizer.state.get(p, {})
        for k, v in state.items():
            tensors[f"adam.{names[i]}.{k}"] = v.detach().to("cpu", copy=True).contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"fingerprint": key, "step": step, "losses": losses, "tokens": tokens}
    with atomic_dir(ckpt.folder, internal=True) as tmp:
        save_file(tensors, str(tmp / STATE))
        (tmp / META).write_text(json.dumps(meta) + "\n", encoding="utf-8")
    ckpt._last = time.monotonic()


def load(ckpt: TrainCheckpoint, *, key: str, lora: dict, optimizer) -> dict | None:
    """Install a matching checkpoint into `lora` and `optimizer`; its meta ({"step", "losses", "tokens"}) or None."""
    import torch
    from safetensors.torch import load_file

    meta_path, state_path = ckpt.folder / META, ckpt.folder / STATE
    if not (meta_path.is_file() and state_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if meta.get("fingerprint") != key:
        return None
    tensors = load_file(str(state_path))
    names = list(lora)
    with torch.no_grad():
        for name, p in lora.items():
            p.copy_(tensors[f"lora.{name}"].to(p.device, p.dtype))
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        prefix = f"adam.{names[i]}."
        state = {k[len(prefix):]: v.to(p.device) for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            # AdamW keeps `step` as a CPU scalar tensor unless it runs fused or capturable (then on the device).
            if "step" in state and not (optimizer.defaults.get("fused") or optimizer.defaults.get("capturable")):
                state["step"] = tensors[prefix + "step"]
            optimizer.state[p] = state
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    ckpt.resumed_from = int(meta["step"])
    return meta


def clear(ckpt: TrainCheckpoint) -> None:
    import shutil

    shutil.rmtree(ckpt.folder, ignore_errors=True)
