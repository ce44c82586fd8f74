"""Small random-weight causal LMs built offline, for tests, demos and benchmarks.

Nothing can be downloaded on CI machines, so the tests make their own models: a byte-level BPE tokenizer trained
with `tokenizers` on local text, a Llama- and a Qwen2-shaped model with random weights, each saved with
`save_pretrained` and loaded back through `from_pretrained` -- the same path a user's hub model takes.
The two architectures get different chat templates and special tokens on purpose, so that code which
secretly depends on one model family's token ids fails a test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

ARCHITECTURES = ("llama", "qwen2")

# ChatML, as Qwen2 models use it.
_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The Llama-3 layout: header tokens around the role, a BOS at the start, <|eot_id|> ending each turn.
_LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

_SPECIALS = {
    "llama": {
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|finetune_right_pad_id|>",
        "extra": ["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"],
        "template": _LLAMA3,
    },
    "qwen2": {
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "extra": ["<|im_start|>"],
        "template": _CHATML,
    },
}


@dataclass(frozen=True)
class TinyShape:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 640
    max_position_embeddings: int = 2048


def default_corpus() -> str:
    return resources.files("core").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8")


def train_tokenizer(arch: str, corpus: str, vocab_size: int):
    """A byte-level BPE tokenizer: it encodes any text, so a small corpus is enough."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = _SPECIALS[arch]
    specials = [t for t in (spec["bos"], spec["eos"], spec["pad"], *spec["extra"]) if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        chat_template=spec["template"],
        model_max_length=2048,
    )


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

    from core.shapes import ModelShape, model_config

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
