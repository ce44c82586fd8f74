"""Reward evaluators shared by the teacher's training and the student's reports.

Every evaluator is a plain callable ``(predictions, references, **kw) -> list[float]``. A reference is one
gold string or several; an item scores the best match over its golds. Extra keyword arguments are accepted
and ignored by the string metrics, so a caller can pass ``questions=`` to whichever evaluator is configured.

Grader failures raise: a silent 0 would read as "the self-edit did not help" and bias the selection.
"""

from __future__ import annotations

import logging
import re
import string
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from core.errors import UserError

log = logging.getLogger(__name__)

Reference = str | Sequence[str]
Reward = Callable[..., list[float]]

# ------------------------------------------------------------------------------------ string metrics

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = frozenset(string.punctuation)


def _is_punct(ch: str) -> bool:
    # Beyond the official SQuAD script's ASCII set: curly quotes and dashes from a model's output should not
    # cost an exact match.
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if not _is_punct(ch))
    return " ".join(_ARTICLES.sub(" ", text).split())


def _em_one(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1_one(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        # As SQuAD v2: nothing against nothing is a match, nothing against something is not.
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def _contained_one(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not ref:
        # The empty sequence is inside everything; counting that as correct would reward any answer.
        return float(not pred)
    n = len(ref)
    return float(any(pred[i : i + n] == ref for i in range(len(pred) - n + 1)))


_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen twenty").split()
_TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_NUMBER_WORDS = {**{w: str(i) for i, w in enumerate(_UNITS)}, **{w: str(v) for w, v in _TENS.items()},
                 "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000"}


def _numeric_tokens(text: str) -> list[str]:
    """Normalised tokens with number words as digits ("two" -> "2"): a chat model writes "2 cylinders" for "two"."""
    return [_NUMBER_WORDS.get(t, t) for t in normalize_answer(text).split()]


def _contained_numeric_one(prediction: str, gold: str) -> float:
    pred, ref = _numeric_tokens(prediction), _numeric_tokens(gold)
    if not ref:
        return float(not pred)
    n = len(ref)
    return float(any(pred[i : i + n] == ref for i in range(len(pred) - n + 1)))


def _golds(reference: Reference, index: int) -> list[str]:
    if isinstance(reference, str):
        return [reference]
    if not isinstance(reference, Sequence) or not all(isinstance(g, str) for g in reference):
        raise TypeError(f"reference {index} must be a string or a sequence of strings, got {reference!r}")
    if not reference:
        raise ValueError(f"reference {index} has no gold answers")
    return list(reference)


def _check_pairs(predictions: Sequence[str], references: Sequence[Reference]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    for i, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise TypeError(f"prediction {i} must be a string, got {type(prediction).__name__}")


def _best_over_golds(score: Callable[[str, str], float]) -> Callable[..., list[float]]:
    def evaluate(predictions: Sequence[str], references: Sequence[Reference], **_: Any) -> list[float]:
        _check_pairs(predictions, references)
        return [
            max(score(p, g) for g in _golds(r, i)) for i, (p, r) in enumerate(zip(predictions, references))
        ]

    return evaluate


exact_match = _best_over_golds(_em_one)
exact_match.__name__ = exact_match.__qualname__ = "exact_match"
exact_match.__doc__ = "1.0 where the normalised prediction equals a normalised gold answer, else 0.0."

token_f1 = _best_over_golds(_f1_one)
token_f1.__name__ = token_f1.__qualname__ = "token_f1"
token_f1.__doc__ = "SQuAD token F1 between normalised prediction and gold, best over golds."

answer_contained = _best_over_golds(_contained_one)
answer_contained.__name__ = answer_contained.__qualname__ = "answer_contained"
answer_contained.__doc__ = (
    "1.0 where a normalised gold answer appears as contiguous whole tokens in the normalised prediction."
)

contains_numeric = _best_over_golds(_contained_numeric_one)
contains_numeric.__name__ = contains_numeric.__qualname__ = "contains_numeric"
contains_numeric.__doc__ = "As answer_contained, with number words read as digits on both sides (two = 2)."

# ------------------------------------------------------------------------------------------- LLM judge

DEFAULT_JUDGE_PROMPT = (
    "You are grading a student's answer to a question. Judge meaning, not wording: an answer is correct "
    "if it states the same fact as one of the reference answers, even when phrased differently; it is wrong "
    "if it is incomplete, contradicts the references, or hedges between several answers.\n\n"
    "Question: {question}\n"
    "Reference answer(s): {answers}\n"
    "Student answer: {prediction}\n\n"
    "Is the student answer correct? Reply with a single word, yes or no."
)
# Appended for tokenizers without a chat template, so that the next token of a base LM is the verdict.
RAW_ANSWER_CUE = "\nAnswer:"

_YES_VARIANTS = (" yes", " Yes", "yes", "Yes")
_NO_VARIANTS = (" no", " No", "no", "No")


def verdict_token_ids(encode: Callable[[str], list[int]]) -> tuple[list[int], list[int], list[str]]:
    """First-token ids of the yes and no spellings, and the spellings that needed several tokens.

    A spelling that is several tokens is read by its first token only. Ids shared by a yes and a no
    spelling (say a lone leading-space token) are dropped: they cannot tell the two apart.
    """
    multi: list[str] = []

    def first_ids(variants: tuple[str, ...]) -> set[int]:
        ids = set()
        for word in variants:
            tokens = encode(word)
            if tokens:
                ids.add(tokens[0])
            if len(tokens) > 1:
                multi.append(word)
        return ids

    yes, no = first_ids(_YES_VARIANTS), first_ids(_NO_VARIANTS)
    yes, no = yes - no, no - yes
    if not yes or not no:
        raise ValueError("the judge's tokenizer gives the same first token for 'yes' and 'no'")
    return sorted(yes), sorted(no), multi


class LLMJudge:
    """Grade predictions with a local causal LM asked a yes/no question; 1.0 when it says yes.

    The verdict compares the next-token probability mass on the yes spellings (" yes", "Yes", ...) with that
    on the no spellings; there is no sampling, so the same inputs always get the same grade. The prompt goes
    through the tokenizer's chat template when it has one; otherwise `RAW_ANSWER_CUE` is appended.
    `prompt_template` is formatted with ``{question}``, ``{answers}`` and ``{prediction}``.
    """

    def __init__(
        self,
        model_or_path: Any,
        tokenizer: Any = None,
        prompt_template: str = DEFAULT_JUDGE_PROMPT,
        device: Any = None,
        batch_size: int = 8,
        trust_remote_code: bool = False,
        dtype: Any = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        _check_template(prompt_template)
        self.prompt_template = prompt_template
        self.batch_size = batch_size
        self.model, self.tokenizer = _load_judge(model_or_path, tokenizer, device, dtype, trust_remote_code)
        self.model.eval()
        self.use_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        yes, no, multi = verdict_token_ids(lambda w: self.tokenizer.encode(w, add_special_tokens=False))
        self.yes_ids, self.no_ids = yes, no
        if multi:
            log.warning(
                "LLM judge: %s are several tokens for this tokenizer; reading the first token of each",
                ", ".join(repr(w) for w in multi),
            )
        self._keeps_logits = _accepts_logits_to_keep(self.model)

    def __call__(
        self,
        predictions: Sequence[str],
        references: Sequence[Reference],
        *,
        questions: Sequence[str] | None = None,
        **_: Any,
    ) -> list[float]:
        return [float(margin > 0) for margin in self.log_odds(predictions, references, questions=questions)]

    def log_odds(
        self,
        predictions: Sequence[str],
        references: Sequence[Reference],
        *,
        questions: Sequence[str] | None = None,
    ) -> list[float]:
        """log P(yes) - log P(no) over the next token, per item; positive means the judge says yes."""
        prompts = self.prompts(predictions, references, questions=questions)
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._score_batch(prompts[start : start + self.batch_size]))
        return out

    def prompts(
        self,
        predictions: Sequence[str],
        references: Sequence[Reference],
        *,
        questions: Sequence[str] | None = None,
    ) -> list[str]:
        """The exact texts the judge reads, chat template applied."""
        _check_pairs(predictions, references)
        if questions is None:
            raise ValueError("LLMJudge needs questions=[...]: it grades an answer against its question")
        if len(questions) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions but {len(questions)} questions")
        bad = next((i for i, q in enumerate(questions) if not isinstance(q, str)), None)
        if bad is not None:
            raise TypeError(f"question {bad} must be a string, got {type(questions[bad]).__name__}")
        return [
            self._render(q, _golds(r, i), p)
            for i, (q, r, p) in enumerate(zip(questions, references, predictions))
        ]

    def _render(self, question: str, golds: list[str], prediction: str) -> str:
        body = self.prompt_template.format(
            question=question.strip(), answers="; ".join(g.strip() for g in golds), prediction=prediction.strip()
        )
        if not self.use_chat_template:
            return body + RAW_ANSWER_CUE
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": body}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,  # templates with a thinking mode would otherwise open a <think> block
        )

    def _score_batch(self, prompts: list[str]) -> list[float]:
        import torch

        encoded = [self._encode(p) for p in prompts]
        lengths = torch.tensor([len(ids) for ids in encoded])
        width = int(lengths.max())
        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else pad
        # Right padding: every sequence keeps positions 0..n-1, so a prompt's logits do not depend on the
        # batch it lands in; causal attention never looks at the pads after it.
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, seq in enumerate(encoded):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        last = lengths - 1
        logits = self._last_logits(ids, mask, last)
        logprobs = torch.log_softmax(logits, dim=-1)
        yes = torch.logsumexp(logprobs[:, self.yes_ids], dim=-1)
        no = torch.logsumexp(logprobs[:, self.no_ids], dim=-1)
        return (yes - no).tolist()

    def _encode(self, prompt: str) -> list[int]:
        # A rendered chat template already holds its special tokens (BOS included).
        ids = self.tokenizer(prompt, add_special_tokens=not self.use_chat_template)["input_ids"]
        if not ids:
            raise ValueError("the judge prompt encoded to no tokens")
        return list(ids)

    def _last_logits(self, ids, mask, last):
        import torch

        device = _model_device(self.model)
        kwargs = {}
        positions = torch.unique(last)  # sorted; only these rows of the vocabulary projection are needed
        if self._keeps_logits:
            kwargs["logits_to_keep"] = positions.to(device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
        column = torch.searchsorted(positions, last) if self._keeps_logits else last
        # Gather before leaving the device: the full [batch, length, vocab] tensor can be large.
        rows = torch.arange(len(last), device=logits.device)
        return logits[rows, column.to(logits.device)].float().cpu()


def _check_template(template: str) -> None:
    try:
        template.format(question="q", answers="a", prediction="p")
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(
            f"judge prompt template is invalid ({exc!r}); it may use only {{question}}, {{answers}}, "
            "{prediction}, with literal braces doubled"
        ) from None
    missing = [k for k in ("question", "answers", "prediction") if "{" + k + "}" not in template]
    if missing:
        raise UserError(f"judge prompt template lacks {', '.join('{' + k + '}' for k in missing)}")


def _load_judge(model_or_path: Any, tokenizer: Any, device: Any, dtype: Any, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model_or_path, (str, Path)):
        from core.models import resolve_model_path

        source = _model_source(model_or_path)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        # A GGUF judge is read from its cached safetensors conversion, in the dtype it will run in.
        source = resolve_model_path(source, dtype=str(dtype).removeprefix("torch."), device=str(device))
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, trust_remote_code=trust_remote_code
            ).to(device)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load judge model {source!r}: {first_line}") from None
    else:
        model = model_or_path
        if tokenizer is None:
            raise ValueError("LLMJudge given a model object needs its tokenizer too")
        if device is not None:
            model = model.to(device)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=trust_remote_code)
    return model, tokenizer


def _model_source(model_or_path: str | Path) -> str:
    path = Path(model_or_path).expanduser()
    looks_local = isinstance(model_or_path, Path) or path.is_absolute() or str(model_or_path).startswith(".")
    # Without this check transformers takes a missing folder for a malformed hub id and says so.
    if looks_local and not path.exists():
        raise UserError(f"judge model folder {str(model_or_path)!r} does not exist")
    return str(path) if path.exists() else str(model_or_path)


def _model_device(model: Any):
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


def _accepts_logits_to_keep(model: Any) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


# -------------------------------------------------------------------------------------------- registry

_STRING_REWARDS: dict[str, Reward] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "contains": answer_contained,
    "contains_numeric": contains_numeric,
}
REWARD_NAMES = (*_STRING_REWARDS, "llm_judge")
_JUDGE_OPTIONS = ("tokenizer", "prompt_template", "device", "batch_size", "trust_remote_code", "dtype")


def get_reward(name: str, **options: Any) -> Reward:
    """The evaluator called `name`; ``llm_judge`` needs ``model=`` (a path, hub id or model object)."""
    if name in _STRING_REWARDS:
        if options:
            raise UserError(f"reward {name!r} takes no options, got {', '.join(sorted(options))}")
        return _STRING_REWARDS[name]
    if name == "llm_judge":
        return _judge_from_options(options)
    raise UserError(f"unknown reward {name!r}; choose one of {', '.join(REWARD_NAMES)}")


def _judge_from_options(options: dict[str, Any]) -> LLMJudge:
    options = dict(options)
    model = options.pop("model", None)
    if model is None:
        raise UserError("reward 'llm_judge' needs model=<path or hub id of a causal LM>")
    unknown = sorted(set(options) - set(_JUDGE_OPTIONS))
    if unknown:
        raise UserError(
            f"unknown option(s) for reward 'llm_judge': {', '.join(unknown)}; valid: model, "
            f"{', '.join(_JUDGE_OPTIONS)}"
        )
    return LLMJudge(model, **options)
