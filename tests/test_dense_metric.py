"""The dense knowledge metrics: the student's log-probability of the gold answer against the document's other answers.

Real tiny models, real forward passes: the batched scorer must equal a one-sequence computation, rivals must not
include another form of the gold answer, and absorbing a fact must raise the gold answer over its rivals.
"""

import math

import pytest
import torch

from core.config import EvalSettings, LoraSettings, ModelSettings, SelfEditSettings, TrainSettings
from core.errors import UserError
from pipeline.documents import Document, Question
from pipeline.tasks import dense, knowledge

EVAL = EvalSettings(qa_prompt="Question: {question}\nAnswer:", use_chat_template="never", metric="answer_rank",
                    max_new_tokens=4)
DOC = Document("d1", "Velmora", "The bridge of Velmora is made of granite. Its mayor is Ada Quill.", [
    Question("What is the bridge made of?", ("granite",)),
    Question("Who is the mayor?", ("Ada Quill",)),
    Question("What is sold at the market?", ("wool",)),
    Question("What stone is the bridge made of?", ("grey granite",)),  # another form of the first answer
])


@pytest.fixture(scope="module")
def engine(tiny_models):
    from student.engine import StudentEngine

    return StudentEngine(ModelSettings(path=str(tiny_models["llama"])), LoraSettings(r=4, alpha=8))


def _one_by_one(engine, prompt_ids, text):
    cont = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([list(prompt_ids) + cont])
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(input_ids=ids).logits[0, :-1].float(), -1)
    n = len(prompt_ids)
    return sum(float(logp[n - 1 + j, t]) for j, t in enumerate(cont)), len(cont)


def test_batched_scores_equal_one_sequence_at_a_time(engine):
    engine.reset(seed=3)
    prompts = engine.encode_prompts(["Question: Who is the mayor?\nAnswer:", "Q: x\nA:"], "never")
    pairs = [(prompts[0], "Ada Quill"), (prompts[1], "granite and a much longer answer"), (prompts[0], "wool")]
    got = engine.continuation_logprobs([p for p, _ in pairs], [t for _, t in pairs], batch_size=2)
    for (p, t), (total, n) in zip(pairs, got):
        want, want_n = _one_by_one(engine, p, t)
        assert n == want_n and total == pytest.approx(want, abs=1e-4)


def test_rivals_are_the_other_answers_but_never_a_form_of_the_gold():
    assert dense.distractors(DOC, 0) == ["Ada Quill", "wool"]  # "grey granite" holds "granite"
    assert dense.distractors(DOC, 1) == ["granite", "wool"]  # first gold per question, deduplicated


def test_margin_and_rank_follow_from_the_logprobs(engine):
    engine.reset()
    scores = knowledge.dense_scores(engine, [DOC], EVAL)
    assert len(scores) == 4
    prompt = engine.encode_prompts([EVAL.qa_prompt.format(question=DOC.questions[1].question)], "never")[0]
    # After a raw prompt ending in "Answer:" the reply starts with a space, as training text has it.
    lp = {t: s / n for t, (s, n) in zip(["Ada Quill", "granite", "wool"], engine.continuation_logprobs(
        [prompt] * 3, [" Ada Quill", " granite", " wool"]))}
    second = scores[1]
    assert second["answer_logprob"] == pytest.approx(lp["Ada Quill"], abs=1e-5)
    assert second["answer_margin"] == pytest.approx(lp["Ada Quill"] - max(lp["granite"], lp["wool"]), abs=1e-5)
    assert second["answer_rank"] == sum(lp[r] < lp["Ada Quill"] for r in ("granite", "wool")) / 2
    lonely = Document("d2", "", "text", [Question("Only question?", ("yes",))])
    assert knowledge.dense_scores(engine, [lonely], EVAL)[0]["answer_margin"] is None


def test_absorbing_the_answer_raises_it_over_its_rivals(engine):
    engine.reset(seed=0)
    before = knowledge.dense_scores(engine, [DOC], EVAL)[1]
    engine.train_texts(["Question: Who is the mayor?\nAnswer: Ada Quill"] * 4,
                       TrainSettings(learning_rate=3e-2, epochs=30, batch_size=2), seed=0)
    after = knowledge.dense_scores(engine, [DOC], EVAL)[1]
    assert after["answer_margin"] > before["answer_margin"] + 0.5
    assert after["answer_rank"] == 1.0


def test_answer_rank_is_a_reward_of_the_knowledge_task(engine):
    task = knowledge.KnowledgeTask(SelfEditSettings(include_passage=True), TrainSettings(epochs=1), EVAL)
    base = task.baseline(engine, DOC)
    assert 0.0 <= base <= 1.0 and not math.isnan(base)
    prepared = task.prepare(DOC, "The mayor of Velmora is Ada Quill.\nThe bridge is granite.")
    assert 0.0 <= task.score(engine, DOC, prepared, seed=1) <= 1.0
    results = knowledge.evaluate(engine, [DOC], EVAL, task.grader)
    assert {"answer_rank", "answer_margin", "answer_logprob", "contains"} <= set(results[0].metrics)
    with pytest.raises(UserError, match="two questions"):
        task.baseline(engine, Document("d2", "", "text", [Question("Only question?", ("yes",))]))


def test_the_metric_is_a_config_choice():
    from core.config import load_config
    from pipeline.settings import AdaptConfig

    cfg = load_config(AdaptConfig, None, ["student.eval.metric=answer_margin"])
    assert cfg.student.eval.metric == "answer_margin"
    with pytest.raises(UserError):
        load_config(AdaptConfig, None, ["student.eval.metric=answer_probability"])
