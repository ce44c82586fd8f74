"""Batched LoRA (`BatchedLoraBank.train_many` / `answer_many`): several self-edits trained together equal training them
one by one."""

import pytest
import torch

from core.config import LoraSettings, ModelSettings, TrainSettings
from student.batched import BatchedLoraBank, _length_buckets

SETS = [
    ["The old bridge in Velmora is made of grey stone.", "Velmora holds a wool market every spring.", "Stone."],
    ["The mayor of Velmora in 1887 was Ada Quill, who also cast the bell that hangs in the town hall tower."],
    ["Alpha beta.", "Gamma delta epsilon zeta.", "Eta.", "Theta iota kappa lambda mu nu xi omicron."],
]
QUESTIONS = [["Who was the mayor?", "What is the bridge made of?"], ["Where is the bell?"], ["When?", "Why?", "How?"]]
SEEDS = [10, 11, 12]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def engine(request, tiny_models):
    from student.engine import StudentEngine

    return StudentEngine(ModelSettings(path=str(tiny_models[request.param])), LoraSettings(r=4, alpha=8))


def _one_by_one(engine, settings):
    out = []
    for texts, questions, seed in zip(SETS, QUESTIONS, SEEDS):
        engine.reset(seed=seed)
        stats = engine.train_texts(texts, settings, seed=seed)
        answers = engine.answer(questions, qa_prompt="Q: {question}\nA:", max_new_tokens=8)
        out.append((stats, engine.adapter_state(), answers))
    return out


@pytest.mark.parametrize("batch_size,scheduler", [(1, "linear"), (2, "cosine")])
def test_train_many_equals_training_one_by_one(engine, batch_size, scheduler):
    settings = TrainSettings(learning_rate=1e-2, epochs=3, batch_size=batch_size, lr_scheduler=scheduler)
    alone = _one_by_one(engine, settings)
    resident = engine.adapter_state()

    bank = BatchedLoraBank(engine)
    stats = bank.train_texts_many(SETS, settings, seeds=SEEDS)
    answers = bank.answer_many(QUESTIONS, qa_prompt="Q: {question}\nA:", max_new_tokens=8)

    for k, (single, state, single_answers) in enumerate(alone):
        # Edits have different numbers of steps: the short ones stop while the others go on.
        assert stats[k].steps == single.steps and stats[k].tokens == single.tokens
        torch.testing.assert_close(stats[k].losses, single.losses, rtol=1e-5, atol=1e-5)
        trained = bank.bank_state(k)
        assert trained.keys() == state.keys()
        for name in state:
            torch.testing.assert_close(trained[name], state[name], rtol=1e-4, atol=1e-5)
        assert answers[k] == single_answers
    after = engine.adapter_state()
    assert all(torch.equal(after[n], resident[n]) for n in after), "train_many must leave the resident LoRA alone"
    assert not any("forward" in vars(m) for m in engine.model.modules()), "routing must be undone"


def test_a_bank_adapter_can_be_installed_and_saved(engine, tmp_path):
    settings = TrainSettings(learning_rate=1e-2, epochs=2)
    bank = BatchedLoraBank(engine)
    bank.train_texts_many(SETS[:2], settings, seeds=SEEDS[:2])
    engine.load_adapter_state(bank.bank_state(1))
    expected = bank.answer_many([QUESTIONS[1], QUESTIONS[1]], qa_prompt="Q: {question}\nA:", max_new_tokens=8)[1]
    assert engine.answer(QUESTIONS[1], qa_prompt="Q: {question}\nA:", max_new_tokens=8) == expected
    engine.save_adapter(tmp_path / "winner")
    engine.reset()
    engine.load_adapter(tmp_path / "winner")
    state = engine.adapter_state()
    assert all(torch.equal(state[n], v) for n, v in bank.bank_state(1).items())


def test_generation_records_the_work_it_needed(engine):
    engine.reset()
    engine.answer(QUESTIONS[0] + QUESTIONS[2], qa_prompt="Q: {question}\nA:", max_new_tokens=5, batch_size=2)
    stats = engine.last_generation
    assert len(stats.prompt_tokens) == len(stats.new_tokens) == 5
    assert all(1 <= n <= 5 for n in stats.new_tokens) and len(stats.batch_steps) == 3
    assert all(steps <= 5 for steps in stats.batch_steps)


def test_length_buckets_keep_long_rows_apart():
    # Padding three short rows to a long one's length costs more than an extra pass.
    assert _length_buckets([550, 68, 66, 62], overhead=256, attention_scale=900) == [[3, 2, 1], [0]]
    # Similar lengths share a pass.
    assert _length_buckets([70, 68, 66, 62], overhead=256, attention_scale=900) == [[3, 2, 1, 0]]
    assert _length_buckets([70, 68, 66, 62], overhead=256, attention_scale=900, max_tokens=140) == [[3, 2], [1, 0]]
    assert _length_buckets([900], overhead=256, attention_scale=900, max_tokens=100) == [[0]]


def test_misuse_is_refused(engine):
    bank = BatchedLoraBank(engine)
    with pytest.raises(ValueError, match="at least one"):
        bank.train_texts_many([["text"], []], TrainSettings(epochs=1))
    fresh = BatchedLoraBank(engine)
    with pytest.raises(ValueError, match="train_many first"):
        fresh.bank_state(0)
    bank.train_texts_many([["a b c"]], TrainSettings(epochs=1))
    with pytest.raises(ValueError, match="question sets"):
        bank.answer_many([["q"], ["q"]], qa_prompt="{question}")
