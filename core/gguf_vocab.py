"""The tokenizer half of a GGUF file (`tokenizer.*` metadata), for `core.gguf_export`.

Two sources. A model that came from a GGUF file gets that file's tokenizer metadata copied byte for byte: it is the
tokenizer llama.cpp already ran the model with, and transformers' reading of it is lossy (SmolLM2's converted
folder splits digits the GPT-2 way, while the file says `smollm`). Any other model folder has its byte-level BPE
`tokenizer.json` written out the way llama.cpp's own converter lays it out: every id up to the model's vocabulary
size, added tokens as control (special) or user-defined, the merges, the special ids and chat template (read by the
`gguf` package's `SpecialVocab`), and `tokenizer.ggml.pre`, the name llama.cpp picks its pre-tokenizer regex by.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import UserError

# The pre-tokenizer regexes of the families we write, as their tokenizer.json files spell them, and the names
# llama.cpp knows them by. A name that does not match the regex would tokenize differently in llama.cpp, silently.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_NAMES = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


def copy_tokenizer_fields(reader, writer, vocab_size: int, where: str | Path = "the source GGUF") -> list[str]:
    """Copy every `tokenizer.*` key a `GGUFReader` holds into `writer` unchanged; the keys copied."""
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_size:
        have = "no" if tokens is None else len(tokens.data)
        raise UserError(f"{where} has {have} tokens but the model has a vocabulary of {vocab_size}: "
                        "its tokenizer is not this model's")
    return copy_fields(reader, writer, lambda key: key.startswith("tokenizer."))


def copy_fields(reader, writer, wanted) -> list[str]:
    """Copy the metadata keys for which `wanted(key)` is true, values and value types as they are."""
    from gguf import GGUFValueType

    copied = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or not wanted(key):
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            sub = field.types[-1]
            writer.add_key_value(key, [_raw(field, i, sub) for i in field.data], kind, sub_type=sub)
        else:
            writer.add_key_value(key, _raw(field, field.data[0], kind), kind)
        copied.append(key)
    return copied


def _raw(field, index: int, kind):
    from gguf import GGUFValueType

    part = field.parts[index]
    if kind == GGUFValueType.STRING:
        return bytes(part)  # written back as the same bytes, never re-encoded
    value = part.tolist()[0]
    return bool(value) if kind == GGUFValueType.BOOL else value


def write_tokenizer_fields(model_dir: str | Path, writer, vocab_size: int) -> dict:
    """Write a model folder's byte-level BPE tokenizer as llama.cpp reads it; what was written, in brief.

    The tokenizer is read as transformers loads it, not from tokenizer.json alone: transformers 5 gives a Qwen2
    folder the Qwen2 pre-tokenizer whatever its tokenizer.json says, and that is the tokenizer the model was
    trained and is run with."""
    from gguf import SpecialVocab
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "tokenizer.json").is_file():
        raise UserError(f"{model_dir} has no tokenizer.json: only fast (tokenizers) BPE tokenizers can be exported")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    spec = _backend_spec(tok, model_dir)
    tokens, types = _token_list(spec, vocab_size)
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"), model_dir)
    merges = _merges(spec)
    if not merges:
        raise UserError(f"{model_dir}: the tokenizer has no merges: not a byte-level BPE tokenizer GGUF can carry")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    # Special ids and the chat template as the gguf package reads them from the folder; whether llama.cpp prepends
    # BOS/EOS is taken from what the tokenizer does, not from config flags that may be absent.
    special = SpecialVocab(model_dir, load_merges=False, n_vocab=vocab_size)
    ids = tok("a")["input_ids"]
    special.add_special_token.update({
        "bos": tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id],
        "eos": tok.eos_token_id is not None and ids[-1:] == [tok.eos_token_id]})
    special.add_to_gguf(writer, quiet=True)
    return {"pre": pre, "tokens": len(tokens), "merges": len(merges), "special": special.special_token_ids}


def _backend_spec(tok, model_dir: Path) -> dict:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{model_dir}: a slow tokenizer ({type(tok).__name__}) cannot be exported; GGUF export "
                        "writes byte-level BPE (tokenizers) tokenizers")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError(f"{model_dir}: a {model.get('type')} tokenizer"
                        f"{' with byte fallback' if model.get('byte_fallback') else ''} is not supported "
                        "(GGUF export writes byte-level BPE tokenizers)")
    return spec


def _merges(spec: dict) -> list[str]:
    """Merges as GGUF stores them, "a b"; a space inside a part becomes its byte-level character (as the gguf
    package writes it), so the pair still splits on the one space."""
    out = []
    for pair in spec["model"].get("merges", []):
        if isinstance(pair, str):
            out.append(pair)
        else:
            out.append(" ".join(part.replace(" ", chr(ord(" ") + 256)) for part in pair))
    return out


def _token_list(spec: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    from gguf import TokenType

    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    if by_id and max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has token id {max(by_id)} but the model's vocabulary is {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            # Rows the embedding has but the tokenizer never produces (vocabularies padded to a multiple).
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        text = by_id[i]
        tokens.append(text)
        if i in added:
            control = added[i].get("special") or (text.startswith("<|") and text.endswith("|>"))
            types.append(TokenType.CONTROL if control else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
    return tokens, types


def pre_tokenizer_name(pre: dict | None, where: Path | str = "tokenizer.json") -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer; a one-line error for one it would not reproduce."""
    pre = pre or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        name = _SPLIT_NAMES.get(parts[0].get("pattern", {}).get("Regex"))
        if name:
            return name
    raise UserError(f"{where}: the pre-tokenizer {json.dumps(pre)[:120]} is not one GGUF export knows by name "
                    "(known: GPT-2 byte level, SmolLM, Llama 3, Qwen2); export from the model's GGUF file instead")
