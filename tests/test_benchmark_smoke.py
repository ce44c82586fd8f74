"""The inner-loop benchmark at its smallest setting: it runs, its table has the promised rows and columns, and the
three loops it compares compute the same thing. Timings are not checked (the machine may be busy)."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks/inner_loop.py"
SMALLEST = ["--model", "tiny", "--data", "embedded", "--docs", "1", "--per-doc", "2", "--repeats", "1",
            "--epochs", "1", "--max-new-tokens", "3", "--max-length", "96", "--rank", "4", "--alpha", "8",
            "--no-warmup", "--probe-seconds", "0.05"]
PHASE_ROWS = ["adapter reset / wrap", "training", "adapter save + reload", "answer generation", "grading", "**total**",
              "self-edits per device-hour"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("inner_loop_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _table(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows if not row.startswith("|---")]


def test_full_comparison_table(bench, capsys, tmp_path):
    report = bench.main(SMALLEST + ["--json", str(tmp_path / "report.json")])
    printed = capsys.readouterr().out
    assert report["table"] in printed
    rows = _table(report["table"])
    assert rows[0] == ["phase", "reference s/edit", "seal-tt s/edit", "ratio", "seal-tt batched ×2 s/edit", "ratio"]
    assert [r[0] for r in rows[1:]] == PHASE_ROWS
    seconds = re.compile(r"^(—|[0-9.e+-]+ \[[0-9.e+-]+–[0-9.e+-]+\])$")
    ratio = re.compile(r"^(—|[0-9.]+x \[[0-9.]+–[0-9.]+\])$")
    for row in rows[1:-1]:
        assert seconds.match(row[1]) and seconds.match(row[2]) and seconds.match(row[4]), row
        assert ratio.match(row[3]) and ratio.match(row[5]), row
    assert rows[3][2] == "—" and rows[3][1] != "—"  # only the reference writes and reads adapters

    # Same seeds, same tokens, same decoding: the loops differ in overhead, not in what they compute.
    for key in ("seal-tt_vs_reference", "batched_vs_seal-tt"):
        agreement = report["agreement"][key]
        assert agreement["lora_max_rel_diff"] < 1e-3, key
        assert agreement["answers_identical"] == agreement["answers"] > 0, key
    floor = report["floor"]["seal-tt"]
    assert floor["train_flops"] > 0 and floor["floor_s"] > 0
    assert report["device"]["matmul_flops"] > 0 and report["device"]["bandwidth"] > 0
    assert (tmp_path / "report.json").exists()


def test_without_reference_or_batching(bench, capsys):
    report = bench.main(SMALLEST + ["--no-reference", "--group", "0"])
    rows = _table(report["table"])
    assert rows[0] == ["phase", "seal-tt s/edit"]
    assert [r[0] for r in rows[1:]] == PHASE_ROWS
    assert report["agreement"] == {}


@pytest.mark.gpu
def test_gpu_path_with_a_shrunken_real_shape(bench):
    """bf16 on the GPU, Qwen2.5-7B's widths and vocabulary, two layers: the code path of the full GPU run."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    args = [a for a in SMALLEST if a not in ("--model", "tiny")]
    report = bench.main(args + ["--model", "qwen2.5-7b", "--shape", "num_hidden_layers=2", "--device", "cuda",
                                "--dtype", "bfloat16", "--max-pass-tokens", "4096"])
    assert report["config"]["dtype"] == "bfloat16" and report["config"]["tokenizer"].startswith("squad8k")
    assert "CPU" not in report["device"]["name"] and set(report["device"]["peak_memory"]) == set(bench.LOOPS)
    assert [r[0] for r in _table(report["table"])[1:]] == PHASE_ROWS
    # bf16 matmuls round differently for different batch shapes, and Adam's first steps are close to sign updates:
    # the loops agree to bf16 precision, not to float32's.
    for key in ("seal-tt_vs_reference", "batched_vs_seal-tt"):
        assert report["agreement"][key]["lora_max_rel_diff"] < 0.1, key
