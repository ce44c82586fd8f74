"""The M-step trains the teacher's LoRA through TRL, and nothing else."""

import torch

from core.config import LoraSettings, MStepSettings, ModelSettings
from core.models import load_tokenizer

PAIRS = [
    {"prompt": "Title: Velmora\nPassage: The bridge is stone.\n\nImplications:\n",
     "completion": "The bridge in Velmora is made of stone.\nVelmora has a stone bridge."},
    {"prompt": "Title: Orrin\nPassage: The lake freezes in December.\n\nImplications:\n",
     "completion": "Orrin Lake freezes every December."},
]
SETTINGS = MStepSettings(lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]),
                         learning_rate=1e-2, epochs=2)


def test_m_step_moves_lora_only_and_masks_the_prompt(tiny_models):
    from core.lora import load_with_lora
    from teacher.sft import sft_dataset, sft_lora

    model = ModelSettings(path=str(tiny_models["llama"]))
    tok = load_tokenizer(model.path)
    peft_model = load_with_lora(model, None, SETTINGS.lora, trainable=True)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    info = sft_lora(peft_model, tok, PAIRS, SETTINGS)
    assert info["steps"] == 4 and info["last_loss"] < info["first_loss"]
    after = dict(peft_model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert moved and all("lora_" in n for n in moved)
    assert any("lora_B" in n for n in moved)

    # completion-only loss: TRL marks prompt tokens out of the loss
    from trl import SFTConfig, SFTTrainer

    ds = sft_dataset(PAIRS, tok, "auto")
    trainer = SFTTrainer(model=peft_model, args=SFTConfig(output_dir="/tmp/unused", use_cpu=True, report_to=[],
                                                          completion_only_loss=True), train_dataset=ds,
                         processing_class=tok)
    row = trainer.train_dataset[0]
    learned = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert row["labels"][0] == -100 and 0 < len(learned) < len(row["input_ids"])
    # exactly the completion (and the end-of-turn token) is learned, in the format the backend samples in
    assert tok.decode(learned, skip_special_tokens=True) == PAIRS[0]["completion"]


def test_run_m_step_saves_and_continues_an_adapter(tiny_models, tmp_path):
    from safetensors.torch import load_file

    from teacher.m_step import run_m_step

    model = ModelSettings(path=str(tiny_models["qwen2"]))
    first = run_m_step(model, PAIRS, SETTINGS, tmp_path / "r1", seed=0)
    assert first["init"] == "fresh"
    w1 = load_file(str(tmp_path / "r1/adapter_model.safetensors"))
    assert all("lora_" in k for k in w1) and any(v.abs().sum() > 0 for k, v in w1.items() if "lora_B" in k)
    second = run_m_step(model, PAIRS[:1], SETTINGS, tmp_path / "r2", init_adapter=tmp_path / "r1", seed=0)
    assert second["init"].endswith("r1")
    w2 = load_file(str(tmp_path / "r2/adapter_model.safetensors"))
    assert w1.keys() == w2.keys() and any(not torch.equal(w1[k], w2[k]) for k in w1)
