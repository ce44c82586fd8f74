"""Writing a model folder back out as a GGUF file that llama.cpp runs (Llama and Qwen2 families).

seal-tt reads GGUF (`core.gguf`); this is the other direction, for a student that should leave the toolkit the way
it came in. A merged model folder (config.json, safetensors, tokenizer) becomes one GGUF file in llama.cpp's own
layout: the architecture's hyperparameters under `<arch>.*`, tensors under llama.cpp's names (`gguf.TensorNameMap`),
Llama's q/k rows permuted from transformers' rotate-half order into the interleaved pairs llama.cpp's RoPE uses,
no `output.weight` when the embeddings are tied, and the tokenizer (`core.gguf_vocab`). Norms and biases stay
float32 whatever the file type, as llama.cpp's converter keeps them: its kernels expect them so.

Tensors are converted and written one at a time (the header is planned from the safetensors shapes), so exporting
needs the memory of one tensor, not of the model. The file is written beside its destination and renamed into
place; an existing file is replaced only when forced and only if it carries the `seal_tt.writer` key this module
writes, so a user's own GGUF is never overwritten.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

FAMILIES = {"llama": "LLAMA", "qwen2": "QWEN2"}  # config.json model_type -> gguf.MODEL_ARCH member
TYPES = ("f16", "q8_0", "f32")
WRITER_KEY = "seal_tt.writer"
WRITER = "seal-tt core.gguf_export 1"
# Descriptive keys of a source GGUF worth keeping (name, license, ...); the structural ones are written anew.
_GENERAL_SKIP = ("general.architecture", "general.file_type", "general.quantization_version", "general.alignment")


@dataclass
class _Planned:
    name: str  # llama.cpp's tensor name
    key: str  # the safetensors key
    file: Path
    shape: tuple
    qtype: object  # gguf.GGMLQuantizationType
    permute_heads: int = 0  # Llama q/k: the head count to permute rows by; 0 for none


def export_gguf(model_dir: str | Path, out_file: str | Path, *, dtype: str = "f16",
                source_gguf: str | Path | None = None, force: bool = False) -> dict:
    """Write the model folder `model_dir` as the GGUF file `out_file` (tensors in `dtype`: f16, q8_0 or f32).

    `source_gguf`: the GGUF file the model came from; its tokenizer metadata is copied verbatim. When not given, a
    folder converted by `core.gguf` names its source itself. Returns a summary of what was written.
    """
    import gguf

    model_dir, out_file = Path(model_dir), Path(out_file)
    if dtype not in TYPES:
        raise UserError(f"GGUF type must be one of {', '.join(TYPES)}, got {dtype!r}")
    config = read_config(model_dir)
    family = config["model_type"]
    source_gguf = Path(source_gguf) if source_gguf is not None else gguf_origin(model_dir)
    check_target(out_file, force)
    arch = gguf.MODEL_ARCH[FAMILIES[family]]
    plan = _plan(model_dir, config, arch, dtype)
    with written_atomically(out_file, force) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
        summary = _metadata(writer, model_dir, config, dtype, source_gguf)
        for p in plan:
            nbytes, shape, np_dtype = _stored(p)
            writer.add_tensor_info(p.name, shape, np_dtype, nbytes, raw_dtype=p.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for p in plan:
            writer.write_tensor_data(_convert(p))
        writer.close()
    return {**summary, "file": str(out_file), "type": dtype, "tensors": len(plan), "bytes": out_file.stat().st_size}


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir} is not a model folder (no config.json)")
    config = json.loads(path.read_text(encoding="utf-8"))
    family = config.get("model_type")
    if family not in FAMILIES:
        raise UserError(f"GGUF export does not support the {family!r} architecture "
                        f"({(config.get('architectures') or ['?'])[0]}); it writes {', '.join(FAMILIES)}")
    return config


def gguf_origin(model_dir: Path) -> Path | None:
    """The GGUF file a `core.gguf` conversion was made from, if the folder is one and the file is still the same."""
    from core.gguf import INFO
    from core.hashing import file_sha256

    try:
        info = json.loads((model_dir / INFO).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    source = Path(info.get("source", ""))
    if source.is_file() and file_sha256(source) == info.get("sha256"):
        return source
    return None


def written_by_seal_tt(path: Path) -> bool:
    from gguf import GGUFReader

    try:
        return WRITER_KEY in GGUFReader(str(path)).fields
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


@contextmanager
def written_atomically(out_file: Path, force: bool):
    """Yield a temporary file beside `out_file`; on success it replaces `out_file` in one rename, checked again
    first (the target may have appeared while this one was written); on any error it is removed."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_file.name}.", suffix=".part", dir=out_file.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp's 0600 would make the exported model unreadable to anyone else
        check_target(out_file, force)
        os.replace(tmp, out_file)
    finally:
        tmp.unlink(missing_ok=True)


def check_target(out_file: Path, force: bool) -> None:
    if out_file.is_dir():
        raise UserError(f"{out_file} is a folder; name the .gguf file to write")
    if not out_file.exists():
        return
    if not force:
        raise UserError(f"{out_file} exists; pass --force to replace it (only a GGUF seal-tt wrote is replaced)")
    if not written_by_seal_tt(out_file):
        raise UserError(f"{out_file} exists and was not written by seal-tt: it is never replaced; choose another file")


def _metadata(writer, model_dir: Path, config: dict, dtype: str, source_gguf: Path | None) -> dict:
    import gguf

    from core.gguf_vocab import copy_fields, copy_tokenizer_fields, write_tokenizer_fields

    vocab = config["vocab_size"]
    if source_gguf is not None:
        reader = gguf.GGUFReader(str(source_gguf))
        copy_fields(reader, writer, lambda k: k.startswith("general.") and k not in _GENERAL_SKIP)
        copied = copy_tokenizer_fields(reader, writer, vocab, source_gguf)
        tokenizer = {"from": str(source_gguf), "keys": len(copied)}
        del reader
    else:
        writer.add_name(config.get("_name_or_path") or model_dir.name)
        tokenizer = {"from": str(model_dir), **write_tokenizer_fields(model_dir, writer, vocab)}
    _hyperparameters(writer, config)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(WRITER_KEY, WRITER)
    writer.add_string("seal_tt.model", model_dir.resolve().name)
    return {"architecture": config["model_type"], "tokenizer": tokenizer}


def _hyperparameters(writer, config: dict) -> None:
    import gguf

    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    if rope_type not in ("default", "linear"):
        raise UserError(f"GGUF export does not support {rope_type!r} RoPE scaling")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    theta = rope.get("rope_theta", config.get("rope_theta"))
    if theta is not None:
        writer.add_rope_freq_base(float(theta))
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if config.get("head_dim") is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if config["model_type"] == "llama":
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(head_dim)


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir} holds no .safetensors weights (pickled .bin weights are not read)")
    return files


def _plan(model_dir: Path, config: dict, arch, dtype: str) -> list[_Planned]:
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    tied = config.get("tie_word_embeddings", False)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    plan = []
    for file in _weight_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
                    continue  # recomputed by llama.cpp / the same matrix as token_embd
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise UserError(f"{file.name}: tensor {key} has no llama.cpp name for {config['model_type']}")
                shape = tuple(f.get_slice(key).get_shape())
                permute = 0
                if config["model_type"] == "llama" and ".self_attn.q_proj." in key:
                    permute = heads
                elif config["model_type"] == "llama" and ".self_attn.k_proj." in key:
                    permute = kv_heads
                plan.append(_Planned(name, key, file, shape, _tensor_type(name, shape, dtype), permute))
    if not any(p.name == "token_embd.weight" for p in plan):
        raise UserError(f"{model_dir}: no token embedding among the weights")
    if not tied and not any(p.name == "output.weight" for p in plan):
        raise UserError(f"{model_dir}: the embeddings are not tied but there is no lm_head.weight")
    return plan


def _tensor_type(name: str, shape: tuple, dtype: str):
    from gguf import GGMLQuantizationType as Q

    if len(shape) <= 1 or not name.endswith(".weight") or name.endswith("_norm.weight") or dtype == "f32":
        return Q.F32
    # Q8_0 packs rows in blocks of 32; a row that does not divide stays f16, as llama.cpp's converter does.
    if dtype == "q8_0" and shape[-1] % 32 == 0:
        return Q.Q8_0
    return Q.F16


def _stored(p: _Planned):
    """(bytes, shape for the writer, numpy dtype) of a planned tensor as it will lie in the file."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import quant_shape_to_byte_shape

    count = int(np.prod(p.shape))
    if p.qtype == Q.F32:
        return count * 4, p.shape, np.dtype(np.float32)
    if p.qtype == Q.F16:
        return count * 2, p.shape, np.dtype(np.float16)
    byte_shape = quant_shape_to_byte_shape(p.shape, p.qtype)
    return int(np.prod(byte_shape)), byte_shape, np.dtype(np.uint8)


def _convert(p: _Planned):
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize
    from safetensors import safe_open

    with safe_open(str(p.file), framework="pt") as f:
        data = f.get_tensor(p.key).float().numpy()
    if p.permute_heads:
        data = rope_permute(data, p.permute_heads)
    if p.qtype == Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if p.qtype == Q.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return quantize(np.ascontiguousarray(data, dtype=np.float32), p.qtype)


def rope_permute(rows, n_head: int):
    """transformers' q/k rows hold each head's two rotary halves one after the other; llama.cpp's RoPE rotates
    adjacent pairs. Reorder each head's rows (h0, h1, ... | g0, g1, ...) into (h0, g0, h1, g1, ...). Works on a
    weight (rows x columns), a bias (rows,) and a LoRA B matrix (rows x rank) alike."""
    head_rows = rows.shape[0] // n_head
    return (rows.reshape(n_head, 2, head_rows // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape))
