"""The teacher's M-step sharded with DeepSpeed (teacher/m_step_sharded.py) on CPU: 2 processes over gloo.

A 2-process ZeRO-2 and a 2-process ZeRO-3 M-step are compared with the in-process `run_m_step` on the same
pairs, seed and global batch (2 = 1 process x batch 1 x accumulation 2 = 2 processes x batch 1; accumulation
rather than a batch of 2 keeps padding out of the reference).  DeepSpeed's CPU comm op is JIT-compiled once into
$TORCH_EXTENSIONS_DIR (default: the repository's git-ignored `.cache/torch_extensions`).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from core.config import LoraSettings, MStepSettings, ModelSettings
from core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
EXTENSIONS_DIR = os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
ENV = {"OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": EXTENSIONS_DIR}

# Completions of different lengths, so the two ranks of a step hold different numbers of loss tokens: a loss
# averaged per rank rather than over the global batch would show up as a logit difference.
PAIRS = [
    {"prompt": "Title: Velmora\nPassage: The bridge is stone.\n\nImplications:\n",
     "completion": "The bridge in Velmora is made of stone.\nVelmora has a stone bridge that crosses the river twice."},
    {"prompt": "Title: Orrin\nPassage: The lake freezes in December.\n\nImplications:\n",
     "completion": "Orrin Lake freezes."},
    {"prompt": "Title: Kest\nPassage: Kest has two mills and a bell tower.\n\nImplications:\n",
     "completion": "Kest has a bell tower.\nKest has two mills, one on each bank, and both still grind flour."},
    {"prompt": "Title: Dune Road\nPassage: The road closes at dusk.\n\nImplications:\n",
     "completion": "Dune Road is closed at night."},
]
SEED = 5
# dropout 0: dropout masks come from each rank's own RNG stream and cannot match one process.
LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"])
REFERENCE = MStepSettings(lora=LORA, learning_rate=1e-2, epochs=2, batch_size=1, gradient_accumulation_steps=2,
                          max_length=128)
PROBES = ["Title: Velmora\nPassage:", "Kest has a bell tower.\nKest has"]
# fp32 on CPU.  Measured max |logit diff| against the in-process adapter: 0 (ZeRO-2), ~2.1e-7 (ZeRO-3, fresh
# and continued LoRA), while training moves the logits by ~0.3 or more (checked against 1000 x LOGIT_ATOL).
LOGIT_ATOL = 1e-4
LOSS_ATOL = 1e-5


def _sharded(deepspeed: str, nproc: int = 2, launcher: str = "torchrun") -> MStepSettings:
    # batch 1 per process x 2 processes = the reference's 1 x accumulation 2.
    return replace(REFERENCE, gradient_accumulation_steps=1, deepspeed=deepspeed, nproc=nproc, launcher=launcher)


def _zero3_fully_sharded(tmp_path: Path) -> str:
    # "auto" persistence (10 x hidden) would keep every tiny LoRA tensor whole on each rank and leave the
    # gather path untested; 0 partitions them all.
    from core.launch import load_deepspeed_config

    config = load_deepspeed_config("zero3")
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp_path / "zero3_full.json"
    path.write_text(json.dumps(config))
    return str(path)


def _logits(base_path, adapter_dir=None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    model = AutoModelForCausalLM.from_pretrained(str(base_path))
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.eval()(**batch).logits


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory):
    """The in-process M-step: (result dict, logits of its adapter on PROBES)."""
    from teacher.m_step import run_m_step

    out = tmp_path_factory.mktemp("m_step_reference") / "teacher"
    info = run_m_step(ModelSettings(path=str(tiny_models["llama"])), PAIRS, REFERENCE, out, seed=SEED)
    return info, _logits(tiny_models["llama"], out)


@pytest.fixture()
def extensions_env(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_sharded_m_step_matches_in_process(stage, tiny_models, reference, tmp_path, extensions_env):
    from core.launch import verify_saved_adapter
    from teacher.m_step import run_m_step

    ref_info, ref_logits = reference
    config = "zero2" if stage == "zero2" else _zero3_fully_sharded(tmp_path)
    # ZeRO-3 goes through the deepspeed launcher, so both launch paths are exercised.
    settings = _sharded(config, launcher="torchrun" if stage == "zero2" else "deepspeed")
    out = tmp_path / "teacher"
    info = run_m_step(ModelSettings(path=str(tiny_models["llama"])), PAIRS, settings, out, seed=SEED)

    assert {"pairs", "steps", "train_loss", "first_loss", "last_loss", "seconds"} <= set(info)
    assert info["init"] == "fresh" and info["pairs"] == len(PAIRS)
    assert info["world_size"] == 2 and info["zero_stage"] == int(stage[-1]) and info["global_batch"] == 2
    assert info["steps"] == ref_info["steps"] == 4  # 4 pairs / global batch 2 x 2 epochs
    assert info["first_loss"] == pytest.approx(ref_info["first_loss"], abs=LOSS_ATOL)
    assert info["last_loss"] == pytest.approx(ref_info["last_loss"], abs=LOSS_ATOL)
    assert info["train_loss"] == pytest.approx(ref_info["train_loss"], abs=LOSS_ATOL)

    saved = verify_saved_adapter(out)  # non-empty tensors, every lora_B non-zero
    assert len(saved) == 2 * len(LORA.target_modules) * 2  # A and B, 3 modules, 2 layers
    assert not list(out.parent.glob(".teacher.sharded.*")), "the job folder is removed after success"

    logits = _logits(tiny_models["llama"], out)
    diff = (logits - ref_logits).abs().max().item()
    print(f"{stage}: max |logit diff| vs in-process {diff:.2e}")
    assert diff < LOGIT_ATOL, f"{stage}: max |logit diff| {diff:.2e} vs the in-process adapter"
    moved = (logits - _logits(tiny_models["llama"])).abs().max().item()
    assert moved > 1000 * LOGIT_ATOL, f"the adapter barely changed the model ({moved:.2e})"

    if stage == "zero3":
        # Loaded inside zero.Init: each rank held about half the teacher's parameters, never all of it.
        assert info["param_numel_held_after_load"] <= 0.6 * info["param_numel_total"]
        # The LoRA tensors were partitioned, so the save really had to gather them.
        assert info["trainable_tensors_partitioned"] == info["trainable_tensors"] == len(saved)
    leaked = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{info['master_port']}_*"))
    assert not leaked, f"shared-memory comm buffers left behind: {leaked}"


@pytest.mark.distributed
def test_sharded_m_step_continues_a_saved_adapter(tiny_models, tmp_path, extensions_env):
    """m_step_init=previous: the saved LoRA is loaded onto a ZeRO-3-partitioned teacher and trained further."""
    from teacher.m_step import run_m_step

    model = ModelSettings(path=str(tiny_models["llama"]))
    first = tmp_path / "r1"
    run_m_step(model, PAIRS, REFERENCE, first, seed=SEED)  # in-process, ~1 s
    ref_info = run_m_step(model, PAIRS[:2], REFERENCE, tmp_path / "ref", init_adapter=first, seed=SEED + 1)
    info = run_m_step(model, PAIRS[:2], _sharded(_zero3_fully_sharded(tmp_path)), tmp_path / "sharded",
                      init_adapter=first, seed=SEED + 1)
    assert info["init"] == ref_info["init"] == str(first) and info["steps"] == ref_info["steps"] == 2
    assert info["trainable_tensors_partitioned"] == info["trainable_tensors"]
    logits = _logits(tiny_models["llama"], tmp_path / "sharded")
    diff = (logits - _logits(tiny_models["llama"], tmp_path / "ref")).abs().max().item()
    assert diff < LOGIT_ATOL, f"continued ZeRO-3: max |logit diff| {diff:.2e} vs the in-process adapter"
    assert (logits - _logits(tiny_models["llama"], first)).abs().max().item() > 1000 * LOGIT_ATOL


@pytest.mark.distributed
def test_train_teacher_cli_with_sharded_m_step(tiny_models, squad_file, tmp_path, capsys, extensions_env):
    from tests.test_train_teacher import SMALL, _jsonl, run_cli

    out = tmp_path / "run"
    code, _, err = run_cli(["train-teacher", "--docs", squad_file, "--teacher", tiny_models["llama"],
                            "--student", tiny_models["qwen2"], "--rounds", 1, "--output", out, "--quiet", *SMALL,
                            "--set", "m_step.deepspeed=zero2", "--set", "m_step.nproc=2"], capsys)
    assert code == 0, err
    m_step = json.loads((out / "round_1/m_step.json").read_text())
    assert m_step["world_size"] == 2 and m_step["zero_stage"] == 2 and m_step["steps"] >= 1
    assert m_step["init"] == "fresh" and m_step["pairs"] == 2
    from core.launch import verify_saved_adapter

    verify_saved_adapter(out / "round_1/teacher")
    assert [m["round"] for m in _jsonl(out / "metrics.jsonl")] == [0, 1]


# --- checks that launch nothing ------------------------------------------------------------------------------


def test_deepspeed_setting_takes_names_and_paths(tmp_path):
    from teacher.sft import check_deepspeed_config

    for value in (None, "zero2", "zero3", "zero3_offload", str(REPO / "configs/deepspeed/zero2.json")):
        check_deepspeed_config(value)
    with pytest.raises(UserError, match="m_step.deepspeed"):
        check_deepspeed_config(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        check_deepspeed_config(str(tmp_path / "bad.json"))


def test_spec_round_trips_and_rejects_unknown_fields(tmp_path):
    from dataclasses import asdict

    from teacher.m_step_sharded import MStepSpec, main

    settings = _sharded("zero2")
    spec = MStepSpec(output_dir=str(tmp_path), adapter_dir=str(tmp_path / "a"), model={"path": "m"},
                     pairs=PAIRS, m_step=asdict(settings), seed=3)
    back = MStepSpec.from_file(spec.write(tmp_path / "spec.json"))
    assert back == spec and back.m_step_settings() == settings and back.model_settings() == ModelSettings(path="m")
    (tmp_path / "bad.json").write_text(json.dumps({"output_dir": "o", "adapter_dir": "a", "epochz": 3}))
    assert main(["--spec", str(tmp_path / "bad.json")]) == 2


def test_launch_command_runs_the_m_step_entry(tmp_path):
    from core.launch import launch_command

    for launcher in ("torchrun", "deepspeed", "accelerate"):
        cmd = launch_command(tmp_path / "spec.json", 2, launcher, port=29999, entry="teacher.m_step_sharded")
        assert "teacher.m_step_sharded" in cmd and "student.distributed_entry" not in cmd
