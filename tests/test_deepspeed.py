"""DeepSpeed-sharded LoRA absorption (student/distributed.py) on CPU: 2 processes over gloo, tiny Llama.

The launched tests start real jobs (torchrun, the deepspeed launcher) as subprocesses and compare them with a
single-process run without DeepSpeed on the same texts, seed and global batch (4 = 1 process x 4 = 2 x 2).

DeepSpeed JIT-compiles a shared-memory comm op on its first CPU run (~25 s, g++ and ninja needed).  It is
cached in $TORCH_EXTENSIONS_DIR, by default the repository's git-ignored `.cache/torch_extensions`, so later
runs start in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import UserError
from core.adapters import WEIGHTS
from core.launch import (
    NAMED_CONFIGS,
    AdapterSaveError,
    free_port,
    launch_command,
    launch_sharded,
    load_deepspeed_config,
    verify_saved_adapter,
)
from student.distributed import ShardedSpec

REPO = Path(__file__).resolve().parents[1]
EXTENSIONS_DIR = os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
ENV = {"OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": EXTENSIONS_DIR}
TIMEOUT = 300

# Lengths from 3 to ~40 tokens, so the two ranks of a step see different token counts (18 vs 91 in the first):
# with the loss averaged per rank instead of over the global batch, the adapter's logits moved 0.28 from the
# reference (measured with average_tokens_across_devices=False), far outside LOGIT_ATOL.
TEXTS = [
    "Ada lives in Oslo.",
    "The amber river flows past the old mill, then under three bridges, and reaches the sea at Port Vell.",
    "Bram keeps bees.",
    "In 1907 the council of Lindholm voted to move the market from the harbour to the square by the church.",
    "Cora paints.",
    "The train to Vask leaves at nine, stops at Orm and Tull, and arrives at noon when the line is clear.",
    "Dov sings in the choir on Sundays.",
    "Eli's workshop repairs clocks, radios and, since last spring, the town's two electric ferries.",
]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
# dropout 0: dropout masks come from each rank's own RNG stream, so they cannot match a single process.
TRAIN = {"lr": 5e-3, "epochs": 2, "seed": 3, "max_length": 64}
GLOBAL_BATCH = 4
PROBES = ["Ada lives in", "The train to Vask leaves at nine, stops at"]
# fp32 on CPU; measured max |logit diff| vs the single-process run: ~2e-7 (ZeRO-2 and ZeRO-3), while
# the trained adapter moves the logits by ~0.5 from the base model.
LOGIT_ATOL = 1e-4
LOSS_ATOL = 1e-5


def _spec(model_path, out_dir, config, nproc, merge=False) -> ShardedSpec:
    return ShardedSpec(
        model_path=str(model_path),
        output_dir=str(out_dir),
        texts=TEXTS,
        lora=LORA,
        train={**TRAIN, "batch_size": GLOBAL_BATCH // nproc},
        deepspeed_config=config,
        merge=merge,
    )


def _zero3_fully_sharded() -> dict:
    # ZeRO-3 keeps tensors below stage3_param_persistence_threshold whole on every rank ("auto" = 10 x hidden
    # = 640 here), which would leave every tiny LoRA tensor unsharded and the gather path untested.
    config = load_deepspeed_config("zero3")
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return config


def _logits(model, tokenizer):
    import torch

    batch = tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def _adapter_logits(base_path, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_path)), str(adapter_dir))
    return _logits(model.eval(), tokenizer)


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory):
    """The single-process run without DeepSpeed: (result dict, logits of its adapter on PROBES)."""
    out = tmp_path_factory.mktemp("ds_reference")
    result = launch_sharded(_spec(tiny_models["llama"], out, None, 1), 1, "python", env=ENV, timeout=TIMEOUT)
    return result, _adapter_logits(tiny_models["llama"], result["adapter_dir"])


# --- launched jobs ------------------------------------------------------------------------------------------


@pytest.mark.distributed
@pytest.mark.parametrize(
    "stage, launcher",
    [("zero2", "torchrun"), ("zero3", "deepspeed")],  # two launchers for the price of two runs
)
def test_two_process_run_matches_single_process(stage, launcher, tiny_models, reference, tmp_path):
    import torch

    ref_result, ref_logits = reference
    config = "zero2" if stage == "zero2" else _zero3_fully_sharded()
    # The ZeRO-3 run also merges, so the merge of gathered weights on rank 0 is checked on a sharded job.
    merge = stage == "zero3"
    spec = _spec(tiny_models["llama"], tmp_path, config, 2, merge)
    result = launch_sharded(spec, 2, launcher, env=ENV, timeout=TIMEOUT)

    assert result["world_size"] == 2 and result["global_batch"] == ref_result["global_batch"] == GLOBAL_BATCH
    assert result["zero_stage"] == int(stage[-1])
    assert result["steps"] == ref_result["steps"] > 1
    assert result["losses"] == pytest.approx(ref_result["losses"], abs=LOSS_ATOL)

    saved = verify_saved_adapter(result["adapter_dir"])  # non-empty, every lora_B trained
    assert len(saved) == 2 * len(LORA["target_modules"]) * 2  # A and B, 4 modules, 2 layers

    logits = _adapter_logits(tiny_models["llama"], result["adapter_dir"])
    diff = (logits - ref_logits).abs().max().item()
    assert diff < LOGIT_ATOL, f"{stage}: max |logit diff| {diff:.2e} vs the single-process adapter"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_logits = _logits(AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"])).eval(),
                          AutoTokenizer.from_pretrained(str(tiny_models["llama"])))
    assert (logits - base_logits).abs().max().item() > 1000 * LOGIT_ATOL, "the adapter barely changed the model"

    # DeepSpeed's CPU comm op leaves a 66 MB /dev/shm file per rank under the deepspeed launcher unless removed.
    leaked = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{result['master_port']}_*"))
    assert not leaked, f"shared-memory comm buffers left behind: {leaked}"

    if stage == "zero3":
        # Loading under zero.Init: each rank held about half the parameters, never the whole model.
        assert result["param_numel_held_after_load"] <= 0.6 * result["param_numel_total"]
        # The LoRA tensors themselves were partitioned, so the save really had to gather them.
        assert result["trainable_tensors_partitioned"] == result["trainable_tensors"] == len(saved)
        merged = AutoModelForCausalLM.from_pretrained(result["merged_dir"]).eval()
        merged_logits = _logits(merged, AutoTokenizer.from_pretrained(result["merged_dir"]))
        assert torch.allclose(merged_logits, logits, atol=1e-5)


@pytest.mark.distributed
def test_ungathered_zero3_save_is_caught(tiny_models, tmp_path):
    """Saving shards without gathering (the classic ZeRO-3 bug) must fail the job, on every rank, loudly."""
    script = tmp_path / "naive_save.py"
    script.write_text(
        "import core.launch as sd\n"
        "# What a plain save does under ZeRO-3: copy each rank's placeholder instead of gathering.\n"
        "sd.gather_trainable = lambda m: {n: p.detach().cpu() for n, p in m.named_parameters() if p.requires_grad}\n"
        "from student.distributed_entry import _run_then_exit_hard\n"
        "_run_then_exit_hard()\n"
    )
    spec = _spec(tiny_models["llama"], tmp_path / "out", _zero3_fully_sharded(), 2).write(tmp_path / "spec.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(script), "--spec", str(spec)]
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=TIMEOUT)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "empty tensor" in log and "without being gathered" in log, log[-3000:]
    assert log.count("AdapterSaveError: saving the adapter") >= 2, "every rank should raise, not only rank 0"
    # The rejected adapter never appears under its name, so nothing downstream can load it by mistake.
    assert not (tmp_path / "out" / "adapter").exists()


# --- checks that launch nothing ------------------------------------------------------------------------------


def _write_adapter(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / WEIGHTS))
    return path


def _tensors(b_value: float = 0.5):
    import torch

    return {
        "base_model.model.layers.0.q_proj.lora_A.weight": torch.ones(4, 8),
        "base_model.model.layers.0.q_proj.lora_B.weight": torch.full((8, 4), b_value),
    }


def test_verify_accepts_trained_adapter(tmp_path):
    tensors = _tensors()
    assert set(verify_saved_adapter(_write_adapter(tmp_path, tensors), tensors)) == set(tensors)


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", "no adapter weights"),
        ("empty", "2 empty tensor"),
        ("half_empty", "1 empty tensor"),  # small tensors ZeRO-3 kept whole, the rest saved as shards
        ("untrained", "all zero"),
        ("changed", "differs"),
    ],
)
def test_verify_rejects_bad_adapter(case, match, tmp_path):
    import torch

    tensors = _tensors()
    expected = None
    if case == "empty":
        tensors = {k: torch.empty(0) for k in tensors}
    elif case == "half_empty":
        tensors = {k: (torch.empty(0) if "lora_A" in k else v) for k, v in tensors.items()}
    elif case == "untrained":
        tensors = _tensors(b_value=0.0)
    elif case == "changed":
        expected = _tensors(b_value=0.25)
    if case != "missing":
        _write_adapter(tmp_path, tensors)
    with pytest.raises(AdapterSaveError, match=match):
        verify_saved_adapter(tmp_path, expected)


def test_shipped_deepspeed_configs():
    for name, path in NAMED_CONFIGS.items():
        config = json.loads(path.read_text())
        assert config == load_deepspeed_config(name) == load_deepspeed_config(path)
        stage = config["zero_optimization"]["stage"]
        assert stage == (2 if name == "zero2" else 3)
        # "auto" lets the Trainer fill batch sizes and precision (bf16 on GPU, fp32 on CPU) from its arguments.
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            assert config[key] == "auto"
        assert config["bf16"]["enabled"] == "auto"
        if stage == 3:
            assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    offload = load_deepspeed_config("zero3_offload")["zero_optimization"]
    assert offload["offload_optimizer"]["device"] == offload["offload_param"]["device"] == "cpu"


def test_bad_inputs_are_user_errors(tmp_path):
    from student.distributed_entry import main

    with pytest.raises(UserError):
        load_deepspeed_config(tmp_path / "nope.json")
    with pytest.raises(UserError):
        launch_command(tmp_path / "spec.json", 2, "mpirun", entry=ShardedSpec.ENTRY)
    (tmp_path / "spec.json").write_text(json.dumps({"model_path": "m", "output_dir": "o", "epochz": 3}))
    assert main(["--spec", str(tmp_path / "spec.json")]) == 2


def test_launch_commands_name_the_entry_module(tmp_path):
    for launcher in ("torchrun", "deepspeed", "accelerate"):
        cmd = launch_command(tmp_path / "spec.json", 2, launcher, port=29999, entry=ShardedSpec.ENTRY)
        assert cmd[0] == sys.executable and "student.distributed_entry" in cmd and "29999" in " ".join(cmd)


def test_settings_take_the_project_config_types():
    from core.config import LoraSettings, TrainSettings
    from student.distributed import _lora_settings, _train_settings

    train = _train_settings(TrainSettings(learning_rate=0.25, epochs=3))
    assert train["lr"] == 0.25 and train["epochs"] == 3 and train["seed"] == 0 and train["grad_accum"] == 1
    assert _train_settings({"lr": 0.5, "seed": 7}) == {**_train_settings(None), "lr": 0.5, "seed": 7}
    assert _lora_settings({"r": 4, "target_modules": ["q_proj"]}) == LoraSettings(r=4, target_modules=["q_proj"])
    with pytest.raises(UserError, match="epochz"):
        _train_settings({"epochz": 1})
    with pytest.raises(UserError):
        _lora_settings({"rank": 4})
