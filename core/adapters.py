"""Adapters on disk: standard PEFT layout in safetensors, verified after every save; merging into the base."""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import UserError
from core.models import ADAPTER_WEIGHTS as WEIGHTS
from core.models import load_causal_lm, load_tokenizer, require_safetensors
from core.rundir import atomic_dir


def save_peft_adapter(peft_model, out_dir: str | Path, *, expected: dict | None = None, base=None) -> Path:
    """Save with PEFT, then re-read the file: an adapter with no tensors, or other values than trained, is an error.

    LoRA under ZeRO-3 is known to write empty adapters when parameters are not gathered first; checking the file
    costs milliseconds and turns a silent failure into a loud one. `base` (a `core.adapter_base.Base`): the model
    trained on, recorded beside the adapter so that loading it on another model is refused.
    """
    out_dir = Path(out_dir)
    # Adapters are saved only inside seal-tt's own folders (run folders, stores), which a resume rewrites.
    with atomic_dir(out_dir, internal=True) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        verify_adapter(tmp, expected)
        if base is not None:
            from core.adapter_base import write_record

            write_record(tmp, base)
    return out_dir


def verify_adapter(adapter_dir: str | Path, expected: dict | None = None) -> dict:
    import torch
    from safetensors.torch import load_file

    path = Path(adapter_dir) / WEIGHTS
    if not path.exists():
        raise RuntimeError(f"adapter save wrote no {WEIGHTS} in {adapter_dir}")
    saved = load_file(str(path))
    if not saved or all(t.numel() == 0 for t in saved.values()):
        raise RuntimeError(f"adapter {path} holds no weights (were sharded parameters gathered before saving?)")
    empty = sorted(k for k, t in saved.items() if t.numel() == 0)
    if empty:
        raise RuntimeError(f"adapter {path}: {len(empty)} tensors are empty, e.g. {empty[0]} (ZeRO-3 partitions not gathered?)")
    if expected is not None:
        by_key = {_canonical(k): v for k, v in saved.items()}
        for name, value in expected.items():
            key = _canonical(name)
            if key not in by_key:
                raise RuntimeError(f"adapter {path} lacks {key}")
            if not torch.equal(by_key[key].to(value.dtype), value.cpu()):
                raise RuntimeError(f"adapter {path}: {key} differs from the trained values")
    return saved


def read_adapter_state(adapter_dir: str | Path, target: dict, adapter_name: str = "default",
                       base_name: str = "this model") -> dict:
    """Load a saved adapter's tensors keyed like the resident model's LoRA parameters (`target`), each of its shape."""
    from safetensors.torch import load_file

    if not Path(adapter_dir).is_dir():
        raise UserError(f"no adapter folder {adapter_dir}")
    require_safetensors(adapter_dir)
    saved = {_canonical(k): v for k, v in load_file(str(Path(adapter_dir) / WEIGHTS)).items()}
    state = {}
    for name, param in target.items():
        key = _canonical(name)
        if key not in saved:
            raise UserError(f"adapter {adapter_dir} does not fit {base_name}: it lacks {key}")
        if tuple(saved[key].shape) != tuple(param.shape):
            raise UserError(f"adapter {adapter_dir} does not fit base {base_name} (another shape): {key} is "
                            f"{tuple(saved[key].shape)} in the adapter, {tuple(param.shape)} in the model")
        state[name] = saved[key]
    return state


def adapter_config(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.exists():
        raise UserError(f"no adapter_config.json in {adapter_dir}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object (a PEFT adapter config)")
    return data


def merge_adapter(base_path: str, adapter_dir: str | Path, out_dir: str | Path, *, dtype="auto",
                  trust_remote_code=False, internal: bool = False, force: bool = False) -> Path:
    """Load base + adapter on one process, fold the LoRA into the weights, save a plain model (safetensors).

    `internal`: `out_dir` lies in a run folder (see `atomic_dir`); by default it is a user's output folder.
    `force`: merge an adapter that records another base of the same shape (see `core.adapter_base`)."""
    from core.adapter_base import Base, check_base, load_peft

    require_safetensors(adapter_dir)
    adapter_config(adapter_dir)
    base = load_causal_lm(base_path, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code)
    check_base(adapter_dir, Base(base_path, base.config), force=force)
    merged = load_peft(base, adapter_dir, base_path).merge_and_unload()
    with atomic_dir(out_dir, internal=internal) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(base_path, trust_remote_code=trust_remote_code).save_pretrained(tmp)
    return Path(out_dir)


def _canonical(name: str) -> str:
    """PEFT saves `...lora_A.weight` without the adapter name that the live module carries (`lora_A.default`)."""
    name = name.replace(".default.", ".")
    for prefix in ("base_model.model.",):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name
