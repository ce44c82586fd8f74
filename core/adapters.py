"""Adapters on disk: standard PEFT layout in safetensors, verified after every save; merging into the base."""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import UserError
from core.models import ADAPTER_WEIGHTS as WEIGHTS
from core.models import load_causal_lm, load_tokenizer, require_safetensors
from core.rundir import atomic_dir


def save_peft_adapter(peft_model, out_dir: str | Path, *, expected: dict | None = None) -> Path:
    """Save with PEFT, then re-read the file: an adapter with no tensors, or other values than trained, is an error.

    LoRA under ZeRO-3 is known to write empty adapters when parameters are not gathered first; checking the file
    costs milliseconds and turns a silent failure into a loud one.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        verify_adapter(tmp, expected)
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


def read_adapter_state(adapter_dir: str | Path, target: dict, adapter_name: str = "default") -> dict:
    """Load a saved adapter's tensors keyed like the resident model's LoRA parameters."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / WEIGHTS
    if not path.exists():
        raise UserError(f"no adapter at {adapter_dir} (expected {WEIGHTS}; .bin adapters are not read: they unpickle)")
    saved = {_canonical(k): v for k, v in load_file(str(path)).items()}
    state = {}
    for name in target:
        key = _canonical(name)
        if key not in saved:
            raise UserError(f"adapter {adapter_dir} does not fit this model: it lacks {key}")
        state[name] = saved[key]
    return state


def adapter_config(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.exists():
        raise UserError(f"no adapter_config.json in {adapter_dir}")
    return json.loads(path.read_text(encoding="utf-8"))


def merge_adapter(base_path: str, adapter_dir: str | Path, out_dir: str | Path, *, dtype="auto",
                  trust_remote_code=False) -> Path:
    """Load base + adapter on one process, fold the LoRA into the weights, save a plain model (safetensors)."""
    from peft import PeftModel

    require_safetensors(adapter_dir)
    base = load_causal_lm(base_path, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
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
