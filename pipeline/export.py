"""`seal-tt export`: a store's current student in formats other tools load (PEFT, vLLM, transformers).

- merge, replay: one standard PEFT LoRA adapter whose update is the sum of the store's updates. Each update i adds
  sᵢ·Bᵢ·Aᵢ to a weight (sᵢ = PEFT's lora_alpha/r times the scale the gate kept), so the sum is one LoRA of rank
  Σrᵢ: B = [s₁B₁ … sₙBₙ], A = [A₁; …; Aₙ], with lora_alpha = r (PEFT's scaling 1). A module that some update did
  not target gets zero blocks there. Exact up to float rounding: the store folds the updates into the weights one
  after another, PEFT adds x·Aᵀ·Bᵀ beside them.
- joint: its latest adapter (the gate's scale folded into B the same way).
- library: one adapter per update that still holds a current document, and `routing.json` (adapter folder ->
  documents); the lexical router that picks one per question is seal-tt's (`seal-tt serve` applies it).
- `merged=True`: a plain model folder (safetensors) with the updates folded in, for tools without LoRA.

Every export names its exact base in `base_model_name_or_path` (for a GGUF student, the dequantized folder it was
trained on) and its content hash in `seal_tt_export.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.errors import UserError

EXPORT_INFO = "seal_tt_export.json"
WEIGHTS = "adapter_model.safetensors"
BASE_RECORD = "seal_tt_base.json"
VLLM_MAX_LORA_RANK = 512  # vLLM's largest --max-lora-rank


def base_identity(model: dict) -> dict:
    """The exact base a store's student sits on: the folder it loads (a GGUF file's conversion) and its hash."""
    from core import gguf
    from core.hashing import file_sha256, folder_sha256

    path = model["path"]
    found = gguf.gguf_file(path)
    folder = gguf.resolve(path, dtype=model.get("dtype", "auto"), device=model.get("device", "auto")) if found else path
    out = {"base_model_name_or_path": str(Path(folder).resolve()) if Path(folder).is_dir() else folder,
           "student": path, "sha256": folder_sha256(folder) if Path(folder).is_dir() else None}
    if found:
        out["gguf"] = {"file": str(found), "sha256": file_sha256(found)}
    return out


def _read_adapter(folder: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    from core.adapters import adapter_config

    return adapter_config(folder), load_file(str(folder / WEIGHTS))


def _scaling(cfg: dict) -> float:
    import math

    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise UserError("export: adapters with per-module ranks (rank_pattern/alpha_pattern) are not supported")
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _modules(tensors: dict, where: Path) -> dict[str, tuple]:
    """Module prefix -> (A, B) of one adapter's tensors; anything but plain LoRA pairs is refused."""
    out: dict[str, dict] = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if key.endswith(suffix):
                out.setdefault(key[: -len(suffix)], {})[part] = value
                break
        else:
            raise UserError(f"export: {where} holds {key}, which is not a plain LoRA pair (DoRA, embeddings and "
                            "saved modules are not exported)")
    return {m: (ab["lora_A"], ab["lora_B"]) for m, ab in out.items()}


def concatenate(adapters: list[tuple[Path, float]]) -> tuple[dict, dict]:
    """One LoRA equal to the sum of `adapters` (folder, extra scale), as (adapter_config, tensors) in float32."""
    import torch

    if not adapters:
        raise ValueError("nothing to concatenate")
    read = []
    for folder, scale in adapters:
        cfg, tensors = _read_adapter(folder)
        if cfg.get("use_dora") or cfg.get("modules_to_save") or cfg.get("fan_in_fan_out"):
            raise UserError(f"export: {folder} is not a plain LoRA adapter (DoRA, modules_to_save or fan_in_fan_out)")
        read.append((int(cfg["r"]), _scaling(cfg) * scale, _modules(tensors, folder), cfg))
    shapes = {}
    for _, _, mods, _ in read:
        for m, (a, b) in mods.items():
            shapes.setdefault(m, (a.shape[1], b.shape[0]))
    tensors = {}
    for m, (fan_in, fan_out) in sorted(shapes.items()):
        a_blocks, b_blocks = [], []
        for r, s, mods, _ in read:
            a, b = mods[m] if m in mods else (torch.zeros(r, fan_in), torch.zeros(fan_out, r))
            a_blocks.append(a.to(torch.float32))
            # The whole scaling rides on B, so that PEFT's own scaling can be 1 for every block.
            b_blocks.append(b.to(torch.float32) * s)
        tensors[f"{m}.lora_A.weight"] = torch.cat(a_blocks, 0).contiguous()
        tensors[f"{m}.lora_B.weight"] = torch.cat(b_blocks, 1).contiguous()
    rank = sum(r for r, _, _, _ in read)
    cfg = dict(read[0][3])
    targets = sorted({t for _, _, _, c in read for t in c.get("target_modules") or []})
    cfg.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={}, target_modules=targets,
               lora_dropout=0.0, inference_mode=True)
    return cfg, tensors


def _write_adapter(folder: Path, cfg: dict, tensors: dict, base: dict, source: Path | None = None) -> None:
    import shutil

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**cfg, "base_model_name_or_path": base["base_model_name_or_path"], "revision": None}
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    # The base record the store's adapters carry (core/adapter_base.py): seal-tt then refuses the export on another
    # base, as it refuses the adapters it came from.
    if source is not None and (source / BASE_RECORD).is_file():
        shutil.copy(source / BASE_RECORD, folder / BASE_RECORD)


def _adapter_of(store, u) -> tuple[Path, float]:
    return store.update_dir(u.number) / "adapter", float(u.scale)


def export_store(store_path, output, *, merged: bool = False, max_lora_rank: int = VLLM_MAX_LORA_RANK,
                 warn=lambda msg: print(msg, file=sys.stderr)) -> dict:
    """Write the store's current student to `output` (a missing or empty folder, or one seal-tt wrote: it is
    replaced whole, in one rename); returns what was written (also in `output/seal_tt_export.json`).

    The store's strategy says how its student is assembled: one set of adapters summed into one LoRA (merge,
    replay, joint), or several kept apart and routed per question (library)."""
    from core.rundir import atomic_dir
    from pipeline.store.layout import Store
    from pipeline.store.strategies import strategy_named

    store = Store(store_path)
    manifest = store.manifest()
    state = store.state()
    strategy = strategy_named(manifest.strategy)
    accepted = state.accepted()
    if not accepted:
        raise UserError(f"{store.path}: no accepted update yet; there is nothing to export but the base model")
    base = base_identity(manifest.settings["student.model"])
    summary = {"store": str(store.path.resolve()), "strategy": strategy.name, "update": accepted[-1].number,
               "updates": [u.number for u in accepted], "base": base, "format": "merged" if merged else "peft"}
    if merged and not strategy.mergeable:
        raise UserError(f"export --merged: a {strategy.name} store is one student per adapter, routed per question; "
                        "export its adapters (without --merged) instead")
    with atomic_dir(Path(output)) as tmp:
        if merged:
            _write_merged(store.path, tmp, state)
        elif strategy.routed:
            routing = {}
            for group in strategy.adapter_sets(state):
                if not group.documents:
                    continue  # retired: it holds no current document, and a question is never routed to it
                name = f"adapters/update-{group.number:04d}"
                sources = [_adapter_of(store, u) for u in group.updates]
                cfg, tensors = concatenate(sources)
                _write_adapter(tmp / name, cfg, tensors, base, sources[-1][0])
                routing[name] = group.documents
            (tmp / "routing.json").write_text(json.dumps(
                {"router": "seal-tt lexical (BM25 over each document and its self-edits); seal-tt serve applies it",
                 "adapters": routing}, indent=2) + "\n", encoding="utf-8")
            summary["adapters"] = routing
        else:
            (group,) = strategy.adapter_sets(state)
            cfg, tensors = concatenate([_adapter_of(store, u) for u in group.updates])
            _write_adapter(tmp, cfg, tensors, base, _adapter_of(store, group.updates[-1])[0])
            summary["rank"] = cfg["r"]
            if cfg["r"] > max_lora_rank:
                warn(f"export: the adapter's rank is {cfg['r']} ({len(group.updates)} updates concatenated), past "
                     f"vLLM's max_lora_rank of {max_lora_rank}: vLLM will not load it; export --merged for a plain "
                     "model")
        (tmp / EXPORT_INFO).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        _readable(tmp)
    summary["output"] = Path(output)
    return summary


def _write_merged(store_path: Path, out: Path, state: dict) -> None:
    """The store's student loaded as it answers, its live LoRA folded in, saved as a plain model."""
    from pipeline.ask import open_store

    engine = open_store(store_path, state).student.engine
    model = engine.model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    engine.tokenizer.save_pretrained(out)


def _readable(folder: Path) -> None:
    """A temporary folder (and safetensors' files) start private; an export is for other programs and users to
    load (a vLLM server under its own account), so it gets the modes the umask gives any new file."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
