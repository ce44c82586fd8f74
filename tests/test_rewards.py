"""Reward evaluators: SQuAD normalisation, EM / F1 / containment, the registry, and the LLM judge's mechanics."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import UserError
from pipeline.rewards import (
    DEFAULT_JUDGE_PROMPT,
    RAW_ANSWER_CUE,
    REWARD_NAMES,
    LLMJudge,
    answer_contained,
    exact_match,
    get_reward,
    normalize_answer,
    token_f1,
    verdict_token_ids,
)

STRING_METRICS = [exact_match, token_f1, answer_contained]

# ------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", ""),
        ("   ", ""),
        ("Denver Broncos", "denver broncos"),
        ("Denver Broncos.", "denver broncos"),
        ("The Denver Broncos!", "denver broncos"),
        ("a cat, an owl and the dog", "cat owl and dog"),
        ("THE END", "end"),
        ("The", ""),
        ("a an the", ""),
        ("theater anthem alpha", "theater anthem alpha"),  # articles only as whole words
        ("  many\t\nspaces   here ", "many spaces here"),
        ("well-known", "wellknown"),  # SQuAD deletes punctuation rather than splitting on it
        ("A.B.C.", "abc"),
        ("don't", "dont"),
        ("$1,000", "1000"),
        ("\u201cquoted\u201d \u2014 text", "quoted text"),  # curly quotes and em dash
        ("the-the", "thethe"),
        ("Über Straße", "über straße"),
        ("1750\u20131840", "17501840"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@given(st.text(max_size=40))
@settings(max_examples=200, deadline=None)
def test_normalize_is_idempotent(text):
    once = normalize_answer(text)
    assert normalize_answer(once) == once
    assert once == once.strip() and "  " not in once


# ------------------------------------------------------------------------------------------ exact match


def test_exact_match_basic():
    preds = ["Denver Broncos", "the denver broncos.", "Broncos", "", ""]
    refs = ["Denver Broncos", "Denver Broncos", "Denver Broncos", "Denver Broncos", ""]
    assert exact_match(preds, refs) == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_exact_match_best_over_golds():
    assert exact_match(["France"], [["Paris", "the French Republic", "France"]]) == [1.0]
    assert exact_match(["Spain"], [("Paris", "France")]) == [0.0]


def test_empty_inputs_give_empty_scores():
    for metric in STRING_METRICS:
        assert metric([], []) == []


# --------------------------------------------------------------------------------------------- token F1


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("Denver Broncos", "Denver Broncos", 1.0),
        ("the cat sat", "cat sat on mat", 2 / 3),  # P = 2/2, R = 2/4
        ("cat sat on mat", "the cat sat", 2 / 3),
        ("x x y", "x y", 0.8),  # repeated tokens count once per gold occurrence: P = 2/3, R = 1
        ("broncos denver", "Denver Broncos", 1.0),  # F1 ignores order
        ("completely different", "Denver Broncos", 0.0),
        ("", "Denver Broncos", 0.0),
        ("Denver", "", 0.0),
        ("", "", 1.0),
        ("the", "a", 1.0),  # both normalise to nothing
        ("Denver, Colorado!", "denver", 2 / 3),
    ],
)
def test_token_f1(pred, gold, expected):
    assert token_f1([pred], [gold]) == [pytest.approx(expected)]


def test_token_f1_best_over_golds():
    assert token_f1(["the cat sat"], [["dog", "cat sat on mat", "cat"]]) == [pytest.approx(2 / 3)]


# ------------------------------------------------------------------------------------------- containment


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("The answer is the Denver Broncos.", "Denver Broncos", 1.0),
        ("Denver Broncos", "Denver Broncos", 1.0),
        ("Broncos Denver", "Denver Broncos", 0.0),  # contiguous and in order
        ("Denver's Broncos", "Denver Broncos", 0.0),
        ("Denverish Broncos", "Denver", 0.0),  # whole tokens only
        ("in Denver.", "denver", 1.0),
        ("", "Denver", 0.0),
        ("Denver", "", 0.0),  # an empty gold would otherwise be inside every answer
        ("", "", 1.0),
        ("the", "The", 1.0),
        ("Denver Colorado Broncos", "Denver Broncos", 0.0),
    ],
)
def test_answer_contained(pred, gold, expected):
    assert answer_contained([pred], [gold]) == [expected]


def test_answer_contained_best_over_golds():
    assert answer_contained(["It was Paris in 1900."], [["London", "Paris"]]) == [1.0]


# ------------------------------------------------------------------------------------ shared behaviour


@given(st.text(max_size=30), st.lists(st.text(max_size=30), min_size=1, max_size=3))
@settings(max_examples=200, deadline=None)
def test_metric_invariants(pred, golds):
    em, f1, contained = (m([pred], [golds])[0] for m in STRING_METRICS)
    assert em in (0.0, 1.0) and contained in (0.0, 1.0) and 0.0 <= f1 <= 1.0
    if em == 1.0:
        assert f1 == 1.0 and contained == 1.0
    if contained == 1.0 and normalize_answer(pred):
        assert f1 > 0.0


@pytest.mark.parametrize("metric", STRING_METRICS)
def test_length_mismatch_is_a_value_error(metric):
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metric(["a", "b"], ["a"])


@pytest.mark.parametrize("metric", STRING_METRICS)
def test_reference_without_golds_is_a_value_error(metric):
    with pytest.raises(ValueError, match="reference 1 has no gold answers"):
        metric(["a", "b"], ["a", []])


@pytest.mark.parametrize("metric", STRING_METRICS)
def test_wrong_types_are_type_errors(metric):
    with pytest.raises(TypeError, match="prediction 0"):
        metric([None], ["a"])
    with pytest.raises(TypeError, match="reference 0"):
        metric(["a"], [["a", 3]])
    with pytest.raises(TypeError, match="reference 0"):
        metric(["a"], [42])


@pytest.mark.parametrize("metric", STRING_METRICS)
def test_extra_keywords_are_ignored(metric):
    # The caller passes questions= to whichever reward is configured; string metrics do not need them.
    assert metric(["Paris"], ["Paris"], questions=["Capital?"]) == [1.0]


def test_metrics_return_python_floats():
    for metric in STRING_METRICS:
        assert all(type(v) is float for v in metric(["a b", "c"], ["a b", ["c", "d"]]))


# ---------------------------------------------------------------------------------------------- registry


def test_registry_names():
    assert set(REWARD_NAMES) == {"exact_match", "token_f1", "contains", "contains_numeric", "llm_judge"}
    assert get_reward("exact_match") is exact_match
    assert get_reward("token_f1") is token_f1
    assert get_reward("contains") is answer_contained


def test_unknown_reward_lists_the_valid_ones():
    with pytest.raises(UserError) as info:
        get_reward("bleu")
    message = str(info.value)
    assert "'bleu'" in message
    assert all(name in message for name in REWARD_NAMES)


def test_string_reward_rejects_options():
    with pytest.raises(UserError, match="takes no options"):
        get_reward("exact_match", model="x")


def test_llm_judge_needs_a_model():
    with pytest.raises(UserError, match="needs model="):
        get_reward("llm_judge")


def test_llm_judge_rejects_unknown_options():
    with pytest.raises(UserError, match="unknown option.*temperature"):
        get_reward("llm_judge", model="x", temperature=0.5)


def test_llm_judge_missing_local_model(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        get_reward("llm_judge", model=str(tmp_path / "no-such-model"))
    with pytest.raises(UserError, match="cannot load judge model"):
        get_reward("llm_judge", model=str(tmp_path))  # exists, but holds no model


def test_importing_rewards_does_not_import_torch():
    code = "import sys, pipeline.rewards; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ judge token choice


def fake_encoder(table: dict[str, list[int]]):
    return lambda word: table[word]


SINGLE_TOKENS = {" yes": [1], " Yes": [2], "yes": [3], "Yes": [4], " no": [5], " No": [6], "no": [7], "No": [8]}


def test_verdict_tokens_single():
    yes, no, multi = verdict_token_ids(fake_encoder(SINGLE_TOKENS))
    assert (yes, no, multi) == ([1, 2, 3, 4], [5, 6, 7, 8], [])


def test_verdict_tokens_merge_variants_that_share_a_token():
    table = {**SINGLE_TOKENS, " Yes": [1], "Yes": [3]}
    assert verdict_token_ids(fake_encoder(table))[0] == [1, 3]


def test_verdict_tokens_multi_token_words_use_the_first_and_are_reported():
    table = {**SINGLE_TOKENS, " yes": [9, 3], " no": [10, 7, 7]}
    yes, no, multi = verdict_token_ids(fake_encoder(table))
    assert 9 in yes and 10 in no and multi == [" yes", " no"]


def test_verdict_tokens_drop_ids_shared_by_yes_and_no():
    # A lone leading-space token starting both " yes" and " no" says nothing about the verdict.
    table = {**SINGLE_TOKENS, " yes": [0, 3], " no": [0, 7]}
    yes, no, _ = verdict_token_ids(fake_encoder(table))
    assert 0 not in yes and 0 not in no


def test_verdict_tokens_that_cannot_tell_yes_from_no():
    table = {word: [0] for word in SINGLE_TOKENS}
    with pytest.raises(ValueError, match="same first token"):
        verdict_token_ids(fake_encoder(table))


def test_template_must_name_every_field():
    with pytest.raises(UserError, match=r"lacks \{prediction\}"):
        LLMJudge("unused", prompt_template="Q: {question} A: {answers}")
    with pytest.raises(UserError, match="invalid"):
        LLMJudge("unused", prompt_template="{question} {answers} {prediction} {score}")


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        LLMJudge("unused", batch_size=0)


# ---------------------------------------------------------------------------------- judge on tiny models

QUESTIONS = [
    "Which NFL team represented the AFC at Super Bowl 50?",
    "What is the capital of France?",
    "In what year did Apollo 11 land?",
    "Who wrote it?",
    "How many states does Germany have?",
]
REFERENCES = ["Denver Broncos", ["Paris", "Paris, France"], "1969", "nobody knows", ["16", "sixteen"]]
PREDICTIONS = [
    "The Denver Broncos represented the AFC.",
    "Paris",
    "It landed in July of 1969, a long and much-discussed mission that took years to prepare.",
    "",
    "Germany has sixteen federal states, called Länder.",
]


@pytest.fixture(scope="module")
def judges(tiny_models):
    return {arch: LLMJudge(path, device="cpu") for arch, path in tiny_models.items()}


@pytest.fixture(params=["llama", "qwen2"])
def arch(request):
    return request.param


@pytest.fixture
def judge(arch, judges):
    return judges[arch]


def grade(judge, **kw):
    return judge(PREDICTIONS, REFERENCES, questions=QUESTIONS, **kw)


def test_judge_returns_one_float_verdict_per_item(judge):
    scores = grade(judge)
    assert len(scores) == len(PREDICTIONS)
    assert all(type(s) is float and s in (0.0, 1.0) for s in scores)


def test_judge_verdicts_follow_the_log_odds(judge):
    margins = judge.log_odds(PREDICTIONS, REFERENCES, questions=QUESTIONS)
    assert grade(judge) == [float(m > 0) for m in margins]


def test_judge_is_deterministic(judge, arch, tiny_models):
    first = judge.log_odds(PREDICTIONS, REFERENCES, questions=QUESTIONS)
    assert judge.log_odds(PREDICTIONS, REFERENCES, questions=QUESTIONS) == first
    fresh = LLMJudge(tiny_models[arch], device="cpu")
    assert fresh.log_odds(PREDICTIONS, REFERENCES, questions=QUESTIONS) == first


@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_judge_is_independent_of_batch_size(judge, batch_size):
    # Prompts differ in length, so larger batches pad; the scores must not notice.
    reference = [judge._score_batch([p])[0] for p in judge.prompts(PREDICTIONS, REFERENCES, questions=QUESTIONS)]
    judge.batch_size, saved = batch_size, judge.batch_size
    try:
        margins = judge.log_odds(PREDICTIONS, REFERENCES, questions=QUESTIONS)
        verdicts = grade(judge)
    finally:
        judge.batch_size = saved
    assert margins == pytest.approx(reference, abs=1e-4)
    assert verdicts == [float(m > 0) for m in reference]


def test_judge_reads_the_same_logits_without_logits_to_keep(judge, monkeypatch):
    kept = judge.log_odds(PREDICTIONS, REFERENCES, questions=QUESTIONS)
    monkeypatch.setattr(judge, "_keeps_logits", False)
    assert judge.log_odds(PREDICTIONS, REFERENCES, questions=QUESTIONS) == pytest.approx(kept, abs=1e-5)


def test_judge_uses_the_chat_template(judges):
    llama = judges["llama"].prompts(["Paris"], ["Paris"], questions=["Capital?"])[0]
    qwen = judges["qwen2"].prompts(["Paris"], ["Paris"], questions=["Capital?"])[0]
    assert llama.startswith("<|begin_of_text|><|start_header_id|>user")
    assert llama.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert qwen.startswith("<|im_start|>user\n") and qwen.endswith("<|im_start|>assistant\n")
    for prompt in (llama, qwen):
        assert "Question: Capital?" in prompt and "Student answer: Paris" in prompt


def test_judge_prompt_lists_every_gold(judges):
    prompt = judges["llama"].prompts(["x"], [["Paris", "Paris, France"]], questions=["q"])[0]
    assert "Reference answer(s): Paris; Paris, France" in prompt


def test_judge_without_chat_template_appends_the_answer_cue(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tokenizer.chat_template = None
    judge = LLMJudge(model, tokenizer=tokenizer, prompt_template="Q {question} | A {answers} | P {prediction}")
    [prompt] = judge.prompts(["Paris"], ["Paris"], questions=["Capital?"])
    assert prompt == "Q Capital? | A Paris | P Paris" + RAW_ANSWER_CUE
    scores = judge(PREDICTIONS, REFERENCES, questions=QUESTIONS)
    assert all(s in (0.0, 1.0) for s in scores)


def test_judge_warns_about_multi_token_verdict_words(tiny_models, caplog):
    # The tiny BPE vocabulary splits " yes" into several tokens.
    with caplog.at_level(logging.WARNING, logger="pipeline.rewards"):
        LLMJudge(tiny_models["qwen2"], device="cpu")
    assert "several tokens" in caplog.text and "first token" in caplog.text


@pytest.mark.parametrize("favoured, expected", [("yes", 1.0), ("no", 0.0)])
def test_judge_reads_the_yes_and_no_tokens(tiny_models, favoured, expected):
    # Replace the output layer by one that ignores the input and prefers one verdict: this checks the
    # wiring from logits to grade that a random model cannot.
    import torch

    judge = LLMJudge(tiny_models["llama"], device="cpu")
    head = judge.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.zero_()
        biased.bias.zero_()
        biased.bias[judge.yes_ids if favoured == "yes" else judge.no_ids] = 5.0
    judge.model.lm_head = biased
    assert grade(judge) == [expected] * len(PREDICTIONS)


def test_judge_needs_questions(judges):
    judge = judges["llama"]
    with pytest.raises(ValueError, match="needs questions"):
        judge(["Paris"], ["Paris"])
    with pytest.raises(ValueError, match="2 predictions but 1 questions"):
        judge(["Paris", "Rome"], ["Paris", "Rome"], questions=["Capital?"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        judge(["Paris", "Rome"], ["Paris"], questions=["a", "b"])
    with pytest.raises(TypeError, match="question 0"):
        judge(["Paris"], ["Paris"], questions=[None])


def test_judge_raises_on_a_model_error(tiny_models, monkeypatch):
    judge = LLMJudge(tiny_models["llama"], device="cpu")

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(judge.model, "forward", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        grade(judge)


def test_judge_with_no_items_does_not_run_the_model(judges, monkeypatch):
    judge = judges["llama"]
    monkeypatch.setattr(judge, "_score_batch", lambda prompts: pytest.fail("model called"))
    assert judge([], [], questions=[]) == []


def test_judge_through_the_registry(tiny_models):
    judge = get_reward("llm_judge", model=str(tiny_models["qwen2"]), batch_size=2, device="cpu")
    assert isinstance(judge, LLMJudge) and judge.batch_size == 2
    assert len(judge(PREDICTIONS, REFERENCES, questions=QUESTIONS)) == len(PREDICTIONS)


def test_default_prompt_names_every_field():
    assert all("{" + k + "}" in DEFAULT_JUDGE_PROMPT for k in ("question", "answers", "prediction"))


def test_contains_numeric_reads_number_words_as_digits():
    from pipeline.rewards import get_reward

    fn = get_reward("contains_numeric")
    assert fn(["The Kaldor engine used 2 cylinders.", "It had two cylinders.", "It had twelve."],
              [["two"], ["2"], ["two"]]) == [1.0, 1.0, 0.0]
    assert get_reward("contains")(["The Kaldor engine used 2 cylinders."], [["two"]]) == [0.0]
