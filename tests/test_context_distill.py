"""Context distillation (student.train.objective=context_distill) on real tiny models: the loss is the KL it claims to
be, vanishes without a passage, falls when trained, and reduces to the next-token loss at distill_weight 0."""

import dataclasses

import pytest
import torch

from core.config import LoraSettings, ModelSettings, TrainSettings
from core.errors import UserError
from student.data import DISTILL_PASSAGE, encode_distill

TEXT = "The old bridge in Velmora is made of grey stone."
PASSAGE = "Velmora is a small town on the river Ost. Its old bridge is made of grey stone and has three arches."
OTHER_TEXT = "Velmora holds a wool market every spring."
OTHER_PASSAGE = "Every spring the farmers of the valley bring their wool to the market of Velmora."
ONE_STEP = TrainSettings(learning_rate=1e-2, epochs=1, batch_size=1, objective="context_distill", max_length=256)


@pytest.fixture(scope="module", params=["llama", "qwen2"])  # llama's tokenizer has a BOS, qwen2's has none
def setup(request, tiny_models):
    from transformers import AutoModelForCausalLM

    from student.engine import StudentEngine

    path = str(tiny_models[request.param])
    engine = StudentEngine(ModelSettings(path=path), LoraSettings(r=4, alpha=8))
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # independent of the engine
    return engine, base


def _ids(tok, text, passage):
    """Both sequences, built here from the documented format rather than by encode_distill."""
    start = [tok.bos_token_id] if tok.bos_token_id is not None else tok("\n", add_special_tokens=False)["input_ids"]
    target = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    block = tok(DISTILL_PASSAGE.format(context=passage), add_special_tokens=False)["input_ids"] if passage else []
    return start + target, start + block + target, len(target)


def _reference(base, tok, pairs):
    """Sum over target tokens of KL(with passage || without) and of the next-token loss, and the token count."""
    kl_sum = nll_sum = 0.0
    count = 0
    with torch.no_grad():
        for text, passage in pairs:
            student, teacher, n = _ids(tok, text, passage)
            log_t = torch.log_softmax(base(torch.tensor([teacher])).logits[0, -n - 1:-1].double(), -1)
            log_s = torch.log_softmax(base(torch.tensor([student])).logits[0, -n - 1:-1].double(), -1)
            kl_sum += float(torch.nn.functional.kl_div(log_s, log_t, log_target=True, reduction="sum"))
            nll_sum += float(torch.nn.functional.nll_loss(log_s, torch.tensor(student[-n:]), reduction="sum"))
            count += n
    return kl_sum, nll_sum, count


def test_encoding_shares_the_target_and_cuts_only_the_text(setup):
    tok = setup[0].tokenizer
    ex = encode_distill(tok, [TEXT], [PASSAGE], 256)[0]
    student, teacher, n = _ids(tok, TEXT, PASSAGE)
    assert (ex.student_ids, ex.teacher_ids, ex.n_target) == (student, teacher, n)
    empty = encode_distill(tok, [TEXT], [""], 256)[0]
    assert empty.teacher_ids == empty.student_ids == student
    block = len(teacher) - len(student)
    cut = encode_distill(tok, [TEXT], [PASSAGE], block + len(student) - 3)[0]
    assert cut.n_target == n - 3 and cut.teacher_ids[:block + 3] == teacher[:block + 3]
    assert cut.student_ids == student[:-3] and len(cut.teacher_ids) == block + len(student) - 3
    with pytest.raises(ValueError, match="passage block"):
        encode_distill(tok, [TEXT], [PASSAGE * 20], 64)


def test_empty_passage_gives_zero_loss(setup):
    engine, _ = setup
    engine.reset(seed=0)
    stats = engine.train_distill([TEXT, OTHER_TEXT], ["", ""], dataclasses.replace(ONE_STEP, batch_size=2), seed=0)
    assert stats.steps == 1 and abs(stats.losses[0]) <= 1e-6


def test_loss_at_initialisation_is_the_kl(setup):
    """One batch of two texts of different lengths (right padding): the mean KL over all their target tokens."""
    engine, base = setup
    engine.reset(seed=4)  # LoRA B = 0: the adapter changes nothing yet
    pairs = [(TEXT, PASSAGE), (OTHER_TEXT, OTHER_PASSAGE)]
    kl_sum, _, count = _reference(base, engine.tokenizer, pairs)
    assert kl_sum / count > 1e-3  # a random tiny model: small, but far above float32 noise
    stats = engine.train_distill(*zip(*pairs), dataclasses.replace(ONE_STEP, batch_size=2), seed=0)
    assert stats.steps == 1 and stats.tokens == sum(len(_ids(engine.tokenizer, *p)[0]) for p in pairs)
    assert stats.losses[0] == pytest.approx(kl_sum / count, rel=1e-5, abs=1e-7)


def test_twenty_steps_lower_the_kl_by_a_third(setup):
    engine, _ = setup
    engine.reset(seed=0)
    settings = dataclasses.replace(ONE_STEP, epochs=20, learning_rate=1e-2)  # 5e-2 overshoots on these models
    ex = encode_distill(engine.tokenizer, [TEXT], [PASSAGE], settings.max_length)
    teacher = engine.teacher_logprobs(ex)
    stats = engine.train_distill([TEXT], [PASSAGE], settings, seed=0)
    assert torch.equal(engine.teacher_logprobs(ex)[0], teacher[0])  # the teacher is the model with the adapter off
    engine.model.eval()
    with torch.no_grad():
        after, _ = engine.distill_loss(ex, teacher)
    assert stats.steps == 20 and stats.losses[0] > 1e-3
    assert float(after) <= 0.7 * stats.losses[0], (stats.losses[0], float(after))


@pytest.mark.parametrize("weight", [0.0, 0.25])
def test_distill_weight_mixes_in_the_next_token_loss(setup, weight):
    engine, base = setup
    engine.reset(seed=1)
    kl_sum, nll_sum, count = _reference(base, engine.tokenizer, [(TEXT, PASSAGE)])
    stats = engine.train_distill([TEXT], [PASSAGE], dataclasses.replace(ONE_STEP, distill_weight=weight), seed=0)
    expected = (weight * kl_sum + (1 - weight) * nll_sum) / count
    assert stats.losses[0] == pytest.approx(expected, rel=1e-5)
    if weight == 0:  # the model's own loss on the same tokens, labels masking the shared start
        student, _, n = _ids(engine.tokenizer, TEXT, PASSAGE)
        labels = [-100] * (len(student) - n) + student[-n:]
        with torch.no_grad():
            hf = base(torch.tensor([student]), labels=torch.tensor([labels])).loss
        assert stats.losses[0] == pytest.approx(float(hf), rel=1e-5)


def test_train_texts_dispatches_on_the_objective(setup):
    from student.batched import BatchedLoraBank

    engine, _ = setup
    engine.reset(seed=2)
    direct = engine.train_distill([TEXT], [PASSAGE], ONE_STEP, seed=3)
    engine.reset(seed=2)
    via = engine.train_texts([TEXT], ONE_STEP, seed=3, contexts=[PASSAGE])
    assert via.losses == direct.losses
    with pytest.raises(ValueError, match="contexts"):
        engine.train_texts([TEXT], ONE_STEP)
    with pytest.raises(ValueError, match="train_distill"):
        engine.train(engine.encode([TEXT], 64), ONE_STEP)
    with pytest.raises(ValueError, match="train_distill"):
        BatchedLoraBank(engine).train_many([engine.encode([TEXT], 64)], ONE_STEP)


def test_rest_em_and_adapt_student_distil_from_the_same_passage(setup):
    """ReST-EM's inner loop (KnowledgeTask.score) trains on a self-edit's texts with the passage adapt-student pairs
    them with (pipeline.self_edits.training_sequences): the same adapter as train_distill given those passages."""
    from core.config import EvalSettings, SelfEditSettings
    from pipeline.documents import Document, Question
    from pipeline.self_edits import training_sequences
    from pipeline.tasks.knowledge import KnowledgeTask

    engine, _ = setup
    doc = Document("velmora", "Velmora", PASSAGE, [Question("What is the bridge made of?", ("grey stone",))])
    self_edit = SelfEditSettings(include_passage=True)
    task = KnowledgeTask(self_edit, ONE_STEP, EvalSettings(max_new_tokens=2, use_chat_template="never",
                                                           metric="token_f1"))
    prepared = task.prepare(doc, f"{TEXT}\n{OTHER_TEXT}")
    adapt = training_sequences([doc], [{"document": doc.id, "training_texts": prepared.payload[:-1]}], None,
                               self_edit=self_edit, max_length=256, num_samples=1)
    assert adapt.texts[doc.id] == prepared.payload and adapt.contexts[doc.id] == [f"Velmora\n{PASSAGE}"] * 3
    task.score(engine, doc, prepared, seed=3)
    scored = {k: v.clone() for k, v in engine.adapter_state().items()}
    engine.reset(seed=3)
    engine.train_distill(adapt.texts[doc.id], adapt.contexts[doc.id], ONE_STEP, seed=3)
    assert all(torch.equal(scored[k], v) for k, v in engine.adapter_state().items())


def test_checkpoint_resumes_only_with_the_same_passages(setup, tmp_path, monkeypatch):
    from student import checkpoint as ckpt_io
    from student.checkpoint import TrainCheckpoint

    engine, _ = setup
    settings = dataclasses.replace(ONE_STEP, epochs=4)
    engine.reset(seed=0)
    whole = engine.train_distill([TEXT], [PASSAGE], settings, seed=0)
    reference = engine.adapter_state()

    clear = ckpt_io.clear
    monkeypatch.setattr(ckpt_io, "clear", lambda ckpt: None)  # a run killed after its last save (step 3)
    engine.reset(seed=0)
    engine.train_distill([TEXT], [PASSAGE], settings, seed=0, checkpoint=TrainCheckpoint(tmp_path, every_steps=1))
    other = TrainCheckpoint(tmp_path, every_steps=100)  # saves nothing itself, so the one above stays
    engine.reset(seed=0)
    engine.train_distill([TEXT], [OTHER_PASSAGE], settings, seed=0, checkpoint=other)
    assert other.resumed_from == 0  # other passages: the saved state is not theirs
    monkeypatch.setattr(ckpt_io, "clear", clear)

    resumed = TrainCheckpoint(tmp_path, every_steps=100)
    engine.reset(seed=9)  # overwritten by the checkpoint
    stats = engine.train_distill([TEXT], [PASSAGE], settings, seed=0, checkpoint=resumed)
    assert resumed.resumed_from == 3 and stats.losses == whole.losses
    assert all(torch.equal(engine.adapter_state()[k], reference[k]) for k in reference)


def test_sharded_training_refuses_context_distill():
    from student.distributed import ShardedSpec, _train_settings

    with pytest.raises(UserError, match="not supported with sharded training"):
        ShardedSpec(model_path="m", output_dir="o", texts=["t"], train={"objective": "context_distill"})
    with pytest.raises(UserError, match="not supported with sharded training"):
        _train_settings(TrainSettings(objective="context_distill"))
    assert _train_settings(TrainSettings())["objective"] == "nll"


def test_distill_weight_range():
    from core.config import check_ranges

    check_ranges(TrainSettings(distill_weight=0.0))
    with pytest.raises(UserError, match="distill_weight"):
        check_ranges(TrainSettings(distill_weight=1.5))


def test_half_precision_model_caches_float16(tiny_models):
    """A bfloat16 student: the teacher's log-probabilities are kept as float16, and the loss stays a KL (>= 0, and
    0 without a passage)."""
    from student.engine import StudentEngine

    engine = StudentEngine(ModelSettings(path=str(tiny_models["llama"]), dtype="bfloat16"), LoraSettings(r=4, alpha=8))
    engine.max_teacher_cache_bytes = 0  # kept on the CPU whatever the device
    ex = encode_distill(engine.tokenizer, [TEXT], [PASSAGE], 256)
    cache = engine.teacher_logprobs(ex)
    assert cache[0].dtype == torch.float16 and cache[0].device.type == "cpu"
    assert cache[0].shape == (ex[0].n_target, engine.model.config.vocab_size)
    engine.reset(seed=0)
    assert engine.train_distill([TEXT], [PASSAGE], ONE_STEP).losses[0] >= 0
    engine.reset(seed=0)
    assert abs(engine.train_distill([TEXT], [""], ONE_STEP).losses[0]) <= 1e-6
