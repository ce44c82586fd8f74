"""The absorption engine on real tiny models: what LoRA training may and may not change."""

import torch
import pytest

from core.config import LoraSettings, ModelSettings, TrainSettings
from student.data import IGNORE_INDEX, TrainExample, collate

TEXTS = ["The old bridge in Velmora is made of grey stone.", "Velmora holds a wool market every spring.",
         "The mayor of Velmora in 1887 was Ada Quill."]
FAST = TrainSettings(learning_rate=1e-2, epochs=3, batch_size=2)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def engine(request, tiny_models):
    from student.engine import StudentEngine

    return StudentEngine(ModelSettings(path=str(tiny_models[request.param])), LoraSettings(r=4, alpha=8))


def _base_state(engine):
    return {n: p.detach().clone() for n, p in engine.model.named_parameters() if "lora_" not in n}


def test_training_moves_lora_and_only_lora(engine):
    engine.reset()
    base_before = _base_state(engine)
    lora_before = engine.adapter_state()
    stats = engine.train_texts(TEXTS, FAST, seed=0)
    assert stats.steps == 6 and stats.losses[-1] < stats.losses[0]
    after = engine.adapter_state()
    assert any(not torch.equal(lora_before[k], after[k]) for k in after if "lora_B" in k)
    for name, value in _base_state(engine).items():
        assert torch.equal(value, base_before[name]), name


def test_reset_restores_initial_state(engine):
    initial = {k: v.clone() for k, v in engine._initial.items()}
    engine.train_texts(TEXTS, FAST, seed=1)
    engine.reset()
    state = engine.adapter_state()
    assert all(torch.equal(state[k], initial[k]) for k in state)
    engine.reset(seed=5)
    first = engine.adapter_state()
    engine.train_texts(TEXTS, FAST, seed=1)
    engine.reset(seed=5)
    again = engine.adapter_state()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert all(float(v.abs().sum()) == 0 for k, v in again.items() if "lora_B" in k)


def test_pads_contribute_nothing_to_the_loss(engine):
    """A sequence's loss and gradients are the same alone and in a batch padded to a longer neighbour."""
    tok = engine.tokenizer
    short = engine.encode(["Short text."], 64)[0]
    long = engine.encode(["A much longer text that forces padding of the short one in the batch."], 64)[0]
    engine.reset(seed=3)
    for p in engine.lora_parameters.values():  # make B non-zero so A's gradients are not trivially zero too
        p.data.normal_(0, 0.02)

    def loss_and_grads(batch, weights):
        engine.model.zero_grad(set_to_none=True)
        inputs = collate(batch, tok.pad_token_id)
        out = engine.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = out.logits[:, :-1].float()
        labels = inputs["labels"][:, 1:]
        per_tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none",
                                                    ignore_index=IGNORE_INDEX)
        per_seq = per_tok.sum(1) / (labels != IGNORE_INDEX).sum(1)
        (per_seq * torch.tensor(weights)).sum().backward()
        return per_seq.detach(), {n: p.grad.clone() for n, p in engine.lora_parameters.items()}

    alone, g_alone = loss_and_grads([short], [1.0])
    batched, g_batched = loss_and_grads([short, long], [1.0, 0.0])
    assert collate([short, long], tok.pad_token_id)["labels"][0, len(short.input_ids):].eq(IGNORE_INDEX).all()
    torch.testing.assert_close(batched[0], alone[0], rtol=1e-5, atol=1e-6)
    for n in g_alone:
        torch.testing.assert_close(g_batched[n], g_alone[n], rtol=1e-4, atol=1e-7)
    engine.model.zero_grad(set_to_none=True)


def test_labels_mask_prompt_tokens(engine):
    ex = TrainExample([5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, 7, 8])
    batch = collate([ex, TrainExample([1, 2], [1, 2])], pad_id=0)
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, 8], [1, 2, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_same_seed_same_result(engine):
    def run():
        engine.reset(seed=7)
        stats = engine.train_texts(TEXTS, TrainSettings(learning_rate=1e-2, epochs=2, batch_size=2, lr_scheduler="cosine"), seed=7)
        return stats.losses, engine.answer(["Where is the bridge?"], qa_prompt="Q: {question}\nA:", max_new_tokens=8)

    assert run() == run()


def test_batched_generation_matches_one_by_one(engine):
    engine.reset()
    qs = ["Who was the mayor?", "What is the bridge made of in the old town?", "When?"]
    batched = engine.answer(qs, qa_prompt="Q: {question}\nA:", max_new_tokens=6, batch_size=3)
    single = [engine.answer([q], qa_prompt="Q: {question}\nA:", max_new_tokens=6)[0] for q in qs]
    assert batched == single


def test_saved_adapter_reloads_with_identical_outputs(engine, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    engine.reset(seed=2)
    engine.train_texts(TEXTS, FAST, seed=2)
    ids = torch.tensor([engine.encode(["Velmora bridge"], 32)[0].input_ids])
    with torch.no_grad():
        trained = engine.model(input_ids=ids).logits
    engine.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    # plain PEFT, as a user would load it
    base = AutoModelForCausalLM.from_pretrained(engine.settings.path)
    plain = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, trained)

    # back into the resident engine after a reset
    engine.reset()
    engine.load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(engine.model(input_ids=ids).logits, trained)

    # merged: base + adapter folded into plain weights
    from core.adapters import merge_adapter

    merged_dir = merge_adapter(engine.settings.path, tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, rtol=1e-4, atol=1e-4)
    assert not any("lora" in k for k in merged.state_dict())


def test_empty_adapter_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    from core.adapters import verify_adapter

    tmp_path.joinpath("adapter_model.safetensors")
    save_file({}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(RuntimeError, match="holds no weights"):
        verify_adapter(tmp_path)


def test_wrong_target_modules_is_a_user_error(tiny_models):
    from core.errors import UserError
    from student.engine import StudentEngine

    with pytest.raises(UserError, match="linear layers are"):
        StudentEngine(ModelSettings(path=str(tiny_models["llama"])), LoraSettings(target_modules=["query_key_value"]))
