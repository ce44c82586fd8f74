"""Small random-weight causal LMs built offline, for tests, demos and benchmarks.

Nothing can be downloaded on CI machines, so the tests make their own models: a byte-level BPE tokenizer trained
with `tokenizers` on local text, a Llama- and a Qwen2-shaped model with random weights, each saved with
`save_pretrained` and loaded back through `from_pretrained` -- the same path a user's hub model takes.
The tokenizers and the two families' chat templates are `core.bpe`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.bpe import ARCHITECTURES, TINY_VOCAB, default_corpus, train_tokenizer
from core.shapes import ModelShape, model_config


@dataclass(frozen=True)
class TinyShape:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = TINY_VOCAB
    max_position_embeddings: int = 2048


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    *,
    shape: TinyShape = TinyShape(),
    seed: int = 0,
    corpus: str | None = None,
) -> Path:
    """Write a random-weight `arch` model and its tokenizer to `out_dir` and return the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(arch, corpus if corpus is not None else default_corpus(), shape.vocab_size)
    # vocab_size None: as many token ids as the trained tokenizer has.
    config = model_config(ModelShape("tiny", arch, shape.hidden_size, shape.intermediate_size,
                                     shape.num_hidden_layers, shape.num_attention_heads, shape.num_key_value_heads,
                                     None, max_position_embeddings=shape.max_position_embeddings), tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "seal_tt_tiny.json").write_text(json.dumps({"arch": arch, "seed": seed, **shape.__dict__}, indent=1))
    return out


def build_tiny_models(out_dir: str | Path, *, seed: int = 0, shape: TinyShape = TinyShape()) -> dict[str, Path]:
    """One tiny model per architecture, in `out_dir/<arch>`; reuses folders already built."""
    out = Path(out_dir)
    paths = {}
    for arch in ARCHITECTURES:
        path = out / arch
        if not (path / "seal_tt_tiny.json").exists():
            build_tiny_model(path, arch, shape=shape, seed=seed)
        paths[arch] = path
    return paths
