"""A training checkpoint resumes only the student it was written for (issue 22): same examples, settings and seed,
and the same base model content, dtype and LoRA settings. `--force` with another student of the same shape, or other
LoRA settings, starts training afresh instead of installing the old LoRA and optimizer state."""

import shutil

import pytest
import torch

from core.config import LoraSettings, ModelSettings, TrainSettings

TEXTS = ["The old bridge in Velmora is made of grey stone.", "Velmora holds a wool market every spring."]
SETTINGS = TrainSettings(learning_rate=1e-2, epochs=2, batch_size=1)  # 4 steps
LORA = LoraSettings(r=4, alpha=8)


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    """The tiny llama; the same model copied elsewhere; another draw of the same shape."""
    from core.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("students")
    moved = shutil.copytree(tiny_models["llama"], root / "moved")
    other = build_tiny_model(root / "other", "llama", seed=1)
    return {"same": tiny_models["llama"], "moved": moved, "other": other}


def _killed_after_its_last_save(path, lora, folder, monkeypatch):
    """Train to the end with a save after every step, the checkpoint kept as a kill after step 3 would leave it."""
    from student import checkpoint as ckpt_io
    from student.checkpoint import TrainCheckpoint
    from student.engine import StudentEngine

    engine = StudentEngine(ModelSettings(path=str(path)), lora)
    engine.reset(seed=0)
    with monkeypatch.context() as m:
        m.setattr(ckpt_io, "clear", lambda ckpt: None)
        stats = engine.train_texts(TEXTS, SETTINGS, seed=0, checkpoint=TrainCheckpoint(folder, every_steps=1))
    return stats, engine.adapter_state()


def _rerun(path, lora, folder):
    from student.checkpoint import TrainCheckpoint
    from student.engine import StudentEngine

    engine = StudentEngine(ModelSettings(path=str(path)), lora)
    engine.reset(seed=0)
    ckpt = TrainCheckpoint(folder, every_steps=100)
    stats = engine.train_texts(TEXTS, SETTINGS, seed=0, checkpoint=ckpt)
    return ckpt.resumed_from, stats, engine.adapter_state()


@pytest.mark.parametrize("student, lora, resumes", [
    ("same", LORA, True),
    ("moved", LORA, True),  # a model folder moved or copied is the same model: its content is
    ("other", LORA, False),  # another student of the same shape
    ("same", LoraSettings(r=4, alpha=16), False),  # the same tensors' shapes, another scaling
    ("same", LoraSettings(r=4, alpha=8, target_modules=["q_proj", "k_proj"]), False),
])
def test_a_checkpoint_resumes_only_for_the_student_it_was_written_for(models, student, lora, resumes, tmp_path,
                                                                       monkeypatch):
    whole, state = _killed_after_its_last_save(models["same"], LORA, tmp_path / "ckpt", monkeypatch)
    resumed_from, stats, after = _rerun(models[student], lora, tmp_path / "ckpt")
    assert resumed_from == (3 if resumes else 0)
    if resumes:
        assert stats.losses == whole.losses
        assert all(torch.equal(after[k], state[k]) for k in state)
    else:
        assert not (tmp_path / "ckpt").exists()  # trained afresh to the end, and the stale checkpoint removed


def test_the_fingerprint_names_the_student(models):
    from student.checkpoint import fingerprint
    from student.engine import StudentEngine

    engine = StudentEngine(ModelSettings(path=str(models["same"])), LORA)
    examples = engine.encode(TEXTS, SETTINGS.max_length)
    identity = engine.identity()
    assert identity["model"].get("sha256") and identity["dtype"] == "torch.float32"
    assert identity["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    same = fingerprint(examples, SETTINGS, 0, student=identity)
    assert same == fingerprint(examples, SETTINGS, 0, student=StudentEngine(
        ModelSettings(path=str(models["moved"])), LORA).identity())
    assert same != fingerprint(examples, SETTINGS, 0, student={**identity, "dtype": "torch.bfloat16"})
    assert same != fingerprint(examples, SETTINGS, 0)
