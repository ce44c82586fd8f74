"""Random-weight models with the shapes of real checkpoints, built directly on the target device.

What LoRA training and greedy decoding cost depends on the architecture's shapes (layers, widths, heads, vocabulary)
and on sequence lengths, not on the weight values; so a benchmark can measure a 7B student on a machine that has
no copy of its weights and no network. `build_shape("qwen2.5-7b", device="cuda", dtype="bfloat16")` allocates and
initialises the parameters on the GPU in bf16 (no full-size CPU copy, no float32 staging).

Text goes through a byte-level BPE tokenizer trained offline: by default the 640-id one of `core.bpe`, or any
tokenizer file or folder (`shape_tokenizer`). Its ids only need to be below the shape's vocabulary size, which holds
for every small BPE here; prompts are plain text encoded by it (no chat template unless asked). A small vocabulary
spends more tokens per word than a real tokenizer (the 640-id one ~3.7 per word of English prose, Qwen2.5's ~1.3), so
sequence lengths, and with them cost, depend on the choice: the benchmark uses an 8k BPE trained on SQuAD text
(~1.5 per word) and reports token counts beside its timings. Generated ids above the tokenizer's range decode to
nothing; random weights seldom emit a newline, so answers mostly run to their token cap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from core.errors import UserError


@dataclass(frozen=True)
class ModelShape:
    name: str
    arch: str  # "llama" | "qwen2"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int | None  # None: the tokenizer's size (the tiny shape)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    mirrors: str = ""  # the checkpoint whose config.json these numbers come from

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


# Numbers from each checkpoint's config.json (rope scaling and other settings that do not change the cost omitted).
SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        ModelShape("tiny", "llama", 64, 128, 2, 4, 2, None, max_position_embeddings=2048, mirrors="core.tiny"),
        ModelShape("llama-3.2-1b", "llama", 2048, 8192, 16, 32, 8, 128256, head_dim=64, tie_word_embeddings=True,
                   rope_theta=500000.0, max_position_embeddings=131072, mirrors="meta-llama/Llama-3.2-1B"),
        ModelShape("llama-3.2-3b", "llama", 3072, 8192, 28, 24, 8, 128256, head_dim=128, tie_word_embeddings=True,
                   rope_theta=500000.0, max_position_embeddings=131072, mirrors="meta-llama/Llama-3.2-3B"),
        ModelShape("qwen2.5-1.5b", "qwen2", 1536, 8960, 28, 12, 2, 151936, tie_word_embeddings=True,
                   rope_theta=1000000.0, max_position_embeddings=131072, mirrors="Qwen/Qwen2.5-1.5B"),
        ModelShape("qwen2.5-7b", "qwen2", 3584, 18944, 28, 28, 4, 152064, tie_word_embeddings=False,
                   rope_theta=1000000.0, max_position_embeddings=131072, mirrors="Qwen/Qwen2.5-7B"),
    )
}


def get_shape(name: str, **overrides) -> ModelShape:
    """A named shape, optionally with fields replaced (`num_hidden_layers=2` for a shallow trial of a wide model)."""
    key = name.lower()
    if key not in SHAPES:
        raise UserError(f"unknown model shape {name!r}; choose one of {', '.join(SHAPES)}")
    shape = SHAPES[key]
    if overrides:
        fields = {f.name for f in dataclasses.fields(ModelShape)} - {"name", "arch", "mirrors"}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise UserError(f"unknown shape field(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
        shape = dataclasses.replace(shape, **overrides)
    return shape


def shape_tokenizer(source: str = "tiny", arch: str = "llama"):
    """A tokenizer for random-weight shapes.

    "tiny": the 640-id byte-level BPE of `core.bpe` (with `arch`'s special tokens and chat template); a folder:
    any saved tokenizer (`AutoTokenizer`); a `tokenizer.json` file, optionally gzipped: a `tokenizers` tokenizer,
    wrapped with the special tokens of whichever `core.bpe` family it holds.
    """
    from pathlib import Path

    from core.bpe import SPECIALS, TINY_VOCAB, default_corpus, train_tokenizer

    if source == "tiny":
        return train_tokenizer(arch, default_corpus(), TINY_VOCAB)
    path = Path(source).expanduser()
    if path.is_dir():
        from core.models import load_tokenizer

        return load_tokenizer(str(path))
    if not path.is_file():
        raise UserError(f"tokenizer {source!r}: expected 'tiny', a tokenizer folder or a tokenizer.json(.gz) file")
    import gzip

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    backend = Tokenizer.from_str(raw.decode("utf-8"))
    family = next((a for a, spec in SPECIALS.items() if backend.token_to_id(spec["eos"]) is not None), None)
    if family is None:
        raise UserError(f"tokenizer {source}: no end-of-sequence token of a known family")
    spec = SPECIALS[family]
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=spec["bos"], eos_token=spec["eos"],
                                   pad_token=spec["pad"], chat_template=spec["template"], model_max_length=1 << 20)


def model_config(shape: ModelShape, tokenizer, attn_implementation: str | None = None):
    from transformers import LlamaConfig, Qwen2Config

    vocab = shape.vocab_size or len(tokenizer)
    if vocab < len(tokenizer):
        raise UserError(f"shape {shape.name} has {vocab} token ids, fewer than the tokenizer's {len(tokenizer)}")
    config_cls = LlamaConfig if shape.arch == "llama" else Qwen2Config
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=shape.tie_word_embeddings,
        rope_theta=shape.rope_theta,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if shape.arch == "llama":
        kwargs["head_dim"] = shape.dim_per_head
    config = config_cls(**kwargs)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    return config


def build_model(shape: ModelShape, tokenizer, *, device: str = "cpu", dtype: str = "float32", seed: int = 0,
                attn_implementation: str | None = None):
    """A random-weight causal LM of `shape`, created on `device` in `dtype` (the "meta" device builds no storage)."""
    import torch
    from transformers import AutoModelForCausalLM

    from core.models import pick_device, pick_dtype

    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    config = model_config(shape, tokenizer, attn_implementation)
    torch.manual_seed(seed)
    # Under a device context the parameters are allocated and initialised where they will live: a 7B shape never
    # passes through host memory, and in bf16 it needs its 15 GB once.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def build_shape(name: str, *, device: str = "cpu", dtype: str = "float32", seed: int = 0,
                attn_implementation: str | None = None, tokenizer: str = "tiny", **overrides):
    """(model, tokenizer, shape) for a named shape; `tokenizer` as in `shape_tokenizer`, overrides as in `get_shape`."""
    shape = get_shape(name, **overrides)
    tok = shape_tokenizer(tokenizer, shape.arch)
    model = build_model(shape, tok, device=device, dtype=dtype, seed=seed, attn_implementation=attn_implementation)
    return model, tok, shape


@dataclass(frozen=True)
class Dims:
    """What FLOP counting needs from an architecture."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> "Dims":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                   getattr(config, "num_key_value_heads", None) or config.num_attention_heads, head_dim,
                   config.intermediate_size, config.vocab_size)

    @property
    def layer_linear_params(self) -> int:
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = self.hidden * (q_out + 2 * kv_out) + q_out * self.hidden
        return attn + 3 * self.hidden * self.intermediate

    @property
    def linear_params(self) -> int:
        """Weights every token multiplies through: all decoder projections plus the output head (not embeddings)."""
        return self.layers * self.layer_linear_params + self.hidden * self.vocab

    def attention_flops(self, context: int, queries: int = 1) -> float:
        """Forward FLOPs of scores and weighted sum for `queries` new positions attending to `context` positions."""
        return 4.0 * self.layers * self.heads * self.head_dim * context * queries

    def forward_flops(self, length: int) -> float:
        """One causal forward over a sequence of `length` tokens (logits at every position)."""
        causal_pairs = length * (length + 1) / 2
        return 2.0 * self.linear_params * length + 4.0 * self.layers * self.heads * self.head_dim * causal_pairs

    def lora_train_flops(self, length: int) -> float:
        """Forward plus backward with frozen base weights: input gradients only (one more pass through every weight
        matrix), attention backward twice its forward; LoRA's own products are under 1% at r=32 and left out."""
        causal_pairs = length * (length + 1) / 2
        attn = 4.0 * self.layers * self.heads * self.head_dim * causal_pairs
        return 4.0 * self.linear_params * length + 3.0 * attn

    def generate_flops(self, prompt: int, new_tokens: int) -> float:
        """Prefill of `prompt` tokens (output head on the last only) then `new_tokens` single-token steps."""
        body = self.linear_params - self.hidden * self.vocab
        head = 2.0 * self.hidden * self.vocab
        prefill_attention = 4.0 * self.layers * self.heads * self.head_dim * prompt * (prompt + 1) / 2
        prefill = 2.0 * body * prompt + head + prefill_attention
        decode = sum(2.0 * self.linear_params + self.attention_flops(prompt + t) for t in range(1, new_tokens))
        return prefill + decode
