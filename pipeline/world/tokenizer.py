"""The world's word-level tokenizer, wrapped so that ``AutoTokenizer.from_pretrained`` loads it like any hub one."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"


def build_tokenizer(lines: list[str]):
    """Every whitespace-separated word is a token, punctuation stands alone, and a newline is a token of its own
    (self-edits are one training text per line, so the teacher must be able to write line breaks).
    """
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK, EOS], min_frequency=1)
    tok.train_from_iterator(lines + ["\n"], trainer=trainer)
    # No post-processor: no BOS is added, so a prompt tokenizes the same inside a longer text and alone.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        clean_up_tokenization_spaces=False,  # "X ." must not become "X." (an unknown word on re-encoding)
        model_max_length=512,
    )
    return fast
