"""Byte-level BPE tokenizers trained offline on local text, with the special tokens and chat template of two model
families (Llama 3 and Qwen2/ChatML), for the random-weight test models (`core.tiny`) and shapes (`core.shapes`).

The two families get different chat templates and special tokens on purpose, so that code which secretly depends
on one model family's token ids fails a test.
"""

from __future__ import annotations

from importlib import resources

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

SPECIALS = {
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


TINY_VOCAB = 640


def default_corpus() -> str:
    return resources.files("core").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8")


def train_tokenizer(arch: str, corpus: str, vocab_size: int):
    """A byte-level BPE tokenizer: it encodes any text, so a small corpus is enough."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = SPECIALS[arch]
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
