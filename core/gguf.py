"""GGUF files as a model source: converted once into a plain safetensors model folder, cached, reused.

transformers reads a GGUF file (with the `gguf` package) by dequantizing every tensor, which costs about 30 s for a
135M model and is repeated on every load; a training run loads its models several times. So a `.gguf` named as a
model (or a folder holding exactly one, and no config.json) is converted once into
`<cache>/gguf/<sha256 of the file, 16 hex>-<dtype>/`: `model.safetensors`, `config.json`, the tokenizer with its chat
template, and `seal_tt_gguf.json` saying where it came from. The key is the file's content, so a renamed or copied
file reuses the conversion and a changed file gets a new one; the dtype is part of the key because a 7B GGUF
dequantized to float32 needs 28 GB, so it follows the model settings (float32 on CPU, bf16 on a GPU that has it).

The cache is `$SEAL_TT_CACHE` (default `~/.cache/seal-tt`). A conversion is written to a temporary folder, checked
(the saved model reloads and gives the same logits as the one read from the GGUF), then renamed into place under a
lock, so two processes never see half a folder.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path

from core.cache import cache_root
from core.errors import UserError
from core.hashing import file_sha256

MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16", "float16")
INFO = "seal_tt_gguf.json"
# Raised whenever what a conversion writes changes (2: the EOS the GGUF names), so older cached folders are redone.
CONVERTER = 2


def gguf_file(name: str | Path) -> Path | None:
    """The GGUF file `name` refers to: a `.gguf` file, or a folder with exactly one and no config.json; else None."""
    p = Path(name).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return p
    if p.is_dir() and not (p / "config.json").exists():
        found = sorted(p.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(f"{p} holds {len(found)} GGUF files ({', '.join(f.name for f in found[:3])}); name one")
    return None


def check_gguf(path: Path) -> dict:
    """Architecture and tensor types of a GGUF file; a file transformers cannot read is a one-line error naming why."""
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise UserError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        from gguf import GGUFReader
        from gguf.quants import _type_traits
    except ImportError:
        raise UserError("reading GGUF files needs the gguf package: pip install gguf") from None
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    try:
        reader = GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure is a damaged or foreign file
        raise UserError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from None
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field is not None else "?"
    supported = set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"}
    if arch not in supported:
        raise UserError(f"{path}: GGUF architecture {arch!r} is not one transformers can read "
                        f"(it reads {', '.join(sorted(supported))})")
    readable = {"F32", "F16", "BF16"} | {t.name for t in _type_traits}
    types = sorted({t.tensor_type.name for t in reader.tensors})
    unknown = [t for t in types if t not in readable]
    if unknown:
        raise UserError(f"{path}: quantization type {unknown[0]} cannot be dequantized by the installed gguf package")
    return {"architecture": arch, "tensor_types": types, "tensors": len(reader.tensors)}


def conversion_dtype(dtype: str = "auto", device: str = "auto") -> str:
    """The dtype a conversion is written in: the model settings' own, with "auto" resolved as the loader resolves it."""
    if dtype in DTYPES:
        return dtype
    import torch

    from core.devices import pick_device, pick_dtype

    resolved = pick_dtype(dtype, pick_device(device))
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[resolved]


def convert_gguf(path: str | Path, out_dir: str | Path, *, dtype: str = "float32", verify: bool = True,
                 internal: bool = False) -> Path:
    """Read a GGUF file with transformers and write a plain safetensors model folder (model, tokenizer, config).

    `internal`: `out_dir` is seal-tt's cache (see `atomic_dir`); by default it is a user's output folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.rundir import atomic_dir

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    if dtype not in DTYPES:
        raise UserError(f"GGUF conversion dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    info = check_gguf(path)
    torch_dtype = getattr(torch, dtype)
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype)
    except (ValueError, NotImplementedError, KeyError) as err:
        raise UserError(f"transformers cannot read {path}: {str(err).strip().splitlines()[0]}") from None
    # The loaded model still carries the GGUF quantization marker, and save_pretrained refuses a "quantized" model;
    # its weights are already dequantized, so the marker is dropped before saving.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        del model.hf_quantizer
    model.is_quantized = False
    # The GGUF's own EOS id (tokenizer.ggml.eos_token_id, which transformers puts in the config) is the one the model
    # was trained to stop with; transformers' tokenizer conversion can name another token (SmolLM2: <|im_start|>
    # instead of <|im_end|>), and a wrong EOS ends every training text and every generation in the wrong place.
    eos = model.config.eos_token_id
    if isinstance(eos, int) and eos != tokenizer.eos_token_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.bos_token_id:
        tokenizer.pad_token = tokenizer.eos_token
    probe = None
    if verify:
        ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            probe = (ids, model(ids).logits)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, internal=internal) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if verify:
            reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch_dtype)
            with torch.no_grad():
                again = reloaded(probe[0]).logits
            if not torch.equal(again, probe[1]):
                diff = (again - probe[1]).abs().max().item()
                raise RuntimeError(f"the converted {path.name} reloads with other logits (max |diff| {diff:.3g})")
            del reloaded
        record = {"converter": CONVERTER, "source": str(path.resolve()), "file": path.name,
                  "sha256": file_sha256(path), "dtype": dtype,
                  **info, "parameters": sum(p.numel() for p in model.parameters()),
                  "seconds": round(time.perf_counter() - started, 1)}
        (tmp / INFO).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return out_dir


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _current(folder: Path) -> bool:
    try:
        return json.loads((folder / INFO).read_text(encoding="utf-8")).get("converter") == CONVERTER
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False


def cached_conversion(path: str | Path, dtype: str = "float32", *, say=None) -> Path:
    """The converted folder of a GGUF file in `dtype`, converting it the first time."""
    path = Path(path).expanduser()
    digest = file_sha256(path)
    folder = cache_root() / "gguf" / f"{digest[:16]}-{dtype}"
    if _current(folder):
        return folder
    with _lock(folder.with_name(folder.name + ".lock")):
        if not _current(folder):
            if say:
                say(f"converting {path.name} to a {dtype} safetensors folder (once; cached in {folder})")
            convert_gguf(path, folder, dtype=dtype, internal=True)
    return folder


def resolve(name: str, *, dtype: str = "auto", device: str = "auto", say=None) -> str:
    """`name` itself, or for a GGUF reference the folder of its cached conversion in the settings' dtype."""
    found = gguf_file(name) if name else None
    if found is None:
        return name
    return str(cached_conversion(found, conversion_dtype(dtype, device), say=say))


def converted_folder(path: Path) -> Path | None:
    """A finished conversion of the GGUF file `path` in any dtype, if the cache holds one."""
    digest = file_sha256(path)
    for dtype in DTYPES:
        folder = cache_root() / "gguf" / f"{digest[:16]}-{dtype}"
        if _current(folder):
            return folder
    return None


def resolve_tokenizer(name: str, *, say=None) -> str:
    """For a GGUF reference, a converted folder to read its tokenizer from (any dtype's will do); the GGUF file
    itself when none exists yet (read by `load_gguf_tokenizer`, no weights dequantized)."""
    found = gguf_file(name) if name else None
    if found is None:
        return name
    folder = converted_folder(found)
    return str(folder) if folder is not None else str(found)


def load_gguf_tokenizer(path: Path):
    """The tokenizer of a GGUF file without converting its weights, with the EOS the file itself names."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    field = GGUFReader(str(path)).fields.get("tokenizer.ggml.eos_token_id")
    if field is not None:
        eos = int(field.parts[field.data[0]][0])
        if eos != tokenizer.eos_token_id:
            tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.bos_token_id:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
