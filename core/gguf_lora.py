"""A PEFT LoRA adapter written as a llama.cpp LoRA GGUF (`llama-cli -m BASE.gguf --lora ADAPTER.gguf`).

Megabytes instead of a whole model, and it goes on the very GGUF file the student was trained from (SmolLM2's Q4_1
file, whose dequantized weights are the student's base), so the base is not rounded again. Not bit-for-bit the
student, though: llama.cpp's kernels for quantized weights round the activations to 8 bits, so on a Q4_1 base the
greedy text drifts from transformers' sooner than on an f16 merged export (measured in tests/test_gguf_llamacpp.py).
llama.cpp adds scale * B(A x) to each targeted matrix, scale = adapter.lora.alpha / rank, as PEFT does with
lora_alpha / r; an rsLoRA adapter (alpha / sqrt(r)) is written with alpha * sqrt(r) so the product is the same.
lora_a is stored (r x in) and lora_b (out x r) under the base tensor's llama.cpp name; for Llama's q and k the rows
of lora_b get the same RoPE permutation as the base weights (P W + P B A = P (W + B A)).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from core.errors import UserError
from core.gguf_export import FAMILIES, WRITER, WRITER_KEY, check_target, rope_permute, written_atomically


def _base_shape(base: str | Path) -> dict:
    """Architecture, head counts and layer count of a base given as a model folder or a GGUF file."""
    from core.gguf import gguf_file

    found = gguf_file(base)
    if found is not None:
        from gguf import GGUFReader

        fields = GGUFReader(str(found)).fields

        def value(key):
            return fields[key].contents() if key in fields else None

        arch = value("general.architecture")
        if arch not in FAMILIES:
            raise UserError(f"LoRA GGUF export does not support the {arch!r} architecture; it writes "
                            f"{', '.join(FAMILIES)}")
        heads = value(f"{arch}.attention.head_count")
        return {"arch": arch, "heads": heads, "kv_heads": value(f"{arch}.attention.head_count_kv") or heads,
                "layers": value(f"{arch}.block_count")}
    from core.gguf_export import read_config

    config = read_config(Path(base))
    heads = config["num_attention_heads"]
    return {"arch": config["model_type"], "heads": heads, "kv_heads": config.get("num_key_value_heads") or heads,
            "layers": config["num_hidden_layers"]}


def _alpha(cfg: dict) -> float:
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
        raise UserError("LoRA GGUF export writes plain LoRA adapters (not DoRA or other PEFT types)")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("modules_to_save"):
        raise UserError("LoRA GGUF export: rank_pattern, alpha_pattern and modules_to_save are not supported")
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    return alpha * math.sqrt(r) if cfg.get("use_rslora") else alpha


def _pairs(adapter_dir: Path, shape: dict) -> list[tuple[str, object]]:
    """(llama.cpp name + .lora_a/.lora_b, float32 array) for every LoRA matrix of the adapter."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from core.models import ADAPTER_WEIGHTS, require_safetensors

    require_safetensors(adapter_dir)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[FAMILIES[shape["arch"]]], shape["layers"])
    out = []
    for key, value in sorted(load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items()):
        part = "lora_a" if ".lora_A." in key else "lora_b" if ".lora_B." in key else None
        if part is None:
            raise UserError(f"{adapter_dir}: {key} is not a LoRA A/B matrix (embeddings and saved modules are not "
                            "supported)")
        module = key.removeprefix("base_model.model.").split(".lora_")[0]
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise UserError(f"{adapter_dir}: {module} has no llama.cpp tensor name for {shape['arch']}")
        data = value.astype(np.float32)
        if part == "lora_b" and shape["arch"] == "llama" and module.endswith("self_attn.q_proj"):
            data = rope_permute(data, shape["heads"])
        elif part == "lora_b" and shape["arch"] == "llama" and module.endswith("self_attn.k_proj"):
            data = rope_permute(data, shape["kv_heads"])
        out.append((f"{name}.{part}", np.ascontiguousarray(data)))
    if not out:
        raise UserError(f"{adapter_dir}: the adapter holds no LoRA matrices")
    return out


def export_lora_gguf(adapter_dir: str | Path, base: str | Path, out_file: str | Path, *, force: bool = False) -> dict:
    """Write the PEFT adapter in `adapter_dir` (trained on `base`: a model folder or GGUF file) as a LoRA GGUF."""
    import gguf

    from core.adapters import adapter_config

    adapter_dir, out_file = Path(adapter_dir), Path(out_file)
    alpha = _alpha(adapter_config(adapter_dir))
    shape = _base_shape(base)
    tensors = _pairs(adapter_dir, shape)
    check_target(out_file, force)
    with written_atomically(out_file, force) as tmp:
        writer = gguf.GGUFWriter(str(tmp), shape["arch"])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_string(WRITER_KEY, WRITER)
        writer.add_string("seal_tt.adapter", json.dumps({"adapter": adapter_dir.resolve().name,
                                                         "base": Path(base).name}))
        for name, data in tensors:
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"file": str(out_file), "alpha": alpha, "tensors": len(tensors), "architecture": shape["arch"]}
