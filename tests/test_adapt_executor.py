"""adapt-student mode=per_document behind the executors: one work item per document, adapters written by the driver
alone, resume by document id, failures recorded and named, the local executor bitwise as the in-process loop was,
and Ray workers giving the local report and adapters.

Tiny random students and given self-edits (no teacher), so every run takes seconds; the Ray test shares one local
cluster (2 CPUs, fractional-CPU workers, a small object store) as tests/test_executor.py does.
"""

import json
import os
import sys
from pathlib import Path

import pytest

from core.config import SelfEditSettings, load_config
from core.seeds import context_seed
from pipeline import absorb, adapt
from pipeline.cli import main
from pipeline.settings import AdaptConfig

DOCS = [
    {"id": "bridge", "title": "Velmora", "text": "Velmora is a river town with a stone bridge. The bridge was built "
     "in 1620 by masons from Orlen.", "questions": [{"question": "What is the bridge made of?", "answer": "stone"},
                                                    {"question": "Who built the bridge?", "answer": "masons"}]},
    {"id": "mayor", "title": "Ada Quill", "text": "Ada Quill was the mayor of Velmora in 1887. She founded the "
     "town library.", "questions": [{"question": "Who was mayor in 1887?", "answer": "Ada Quill"}]},
    {"id": "mill/old", "title": "The mill", "text": "The old mill grinds barley every autumn. Its wheel is painted "
     "blue.", "questions": [{"question": "What does the mill grind?", "answer": "barley"},
                            {"question": "What colour is the wheel?", "answer": "blue"}]},
]
NAMES = {"bridge": "0000_bridge", "mayor": "0001_mayor", "mill/old": "0002_mill_old"}
FAST = ["student.train.epochs=2", "student.eval.max_new_tokens=6", "student.eval.use_chat_template=never",
        "student.lora.r=4", "student.lora.alpha=8", "seed=5"]


def _completion(d):
    return d["text"].replace(". ", ".\n") + "\nRemember: " + d["questions"][0]["answer"] + "."


@pytest.fixture
def data(tmp_path):
    docs, edits = tmp_path / "docs.jsonl", tmp_path / "edits.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    edits.write_text("".join(json.dumps({"document": d["id"], "completion": _completion(d)}) + "\n" for d in DOCS))
    return docs, edits


def _config(tiny_models, data, out, *sets) -> AdaptConfig:
    docs, edits = data
    return load_config(AdaptConfig, None, [f"docs=[{docs}]", f"edits.file={edits}", "mode=per_document",
                                           f"student.model.path={tiny_models['llama']}", f"output={out}", *FAST,
                                           *sets])


def _stable(report: dict) -> dict:
    """The report without what differs between otherwise identical runs (wall times)."""
    out = {k: v for k, v in report.items() if k != "timings"}
    out["training"] = [{k: v for k, v in t.items() if k != "seconds"} for t in report["training"]]
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _adapter_files(run: Path) -> dict[str, bytes]:
    return {f"{d.name}/{f.name}": f.read_bytes()
            for d in sorted((run / "adapters").iterdir()) for f in sorted(d.iterdir())}


def _same_adapter_files(a: Path, b: Path) -> None:
    """Same files, the same tensor bytes; adapter_config.json equal as data (PEFT writes target_modules, a set, in
    the process's hash order)."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) == ["README.md", "adapter_config.json",
                                                            "adapter_model.safetensors", "seal_tt_base.json"]
    for name in ("README.md", "adapter_model.safetensors", "seal_tt_base.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a / name} differs from {b / name}"
    ca, cb = (json.loads((p / "adapter_config.json").read_text()) for p in (a, b))
    ca["target_modules"], cb["target_modules"] = sorted(ca["target_modules"]), sorted(cb["target_modules"])
    assert ca == cb


@pytest.fixture
def counted(monkeypatch):
    """How many documents were absorbed (work items scored) in this process."""
    calls = []
    original = absorb.DocumentScorer.score

    def score(self, item):
        calls.append(item.key)
        return original(self, item)

    monkeypatch.setattr(absorb.DocumentScorer, "score", score)
    return calls


def test_local_executor_adapters_are_the_in_process_loops_bit_for_bit(tiny_models, data, tmp_path, counted):
    """What mode=per_document computed before the executor: per document, reset from its seed, train, save."""
    import torch
    from safetensors.torch import load_file

    from pipeline.documents import load_documents
    from pipeline.tasks.knowledge import training_texts
    from student.engine import StudentEngine

    torch.set_num_threads(1)
    cfg = _config(tiny_models, data, tmp_path / "run")
    report = adapt.adapt_student(cfg, progress=False)
    assert counted == ["bridge", "mayor", "mill/old"]
    assert [d["id"] for d in report["per_document"]] == list(NAMES) and report["documents"] == 3
    assert "failed" not in report and report["adapter"] == "adapters"
    assert [q["document"] for q in report["questions"]] == ["bridge", "bridge", "mayor", "mill/old", "mill/old"]

    engine = StudentEngine(cfg.student.model, cfg.student.lora)
    docs = {d.id: d for d in load_documents(str(data[0]))}
    for raw in DOCS:
        doc = docs[raw["id"]]
        seed = context_seed(cfg.seed, doc.id)
        engine.reset(seed=seed)
        engine.train_texts(training_texts(doc, [_completion(raw)], SelfEditSettings()), cfg.student.train, seed=seed)
        direct = tmp_path / "direct" / NAMES[doc.id]
        engine.save_adapter(direct)
        saved = tmp_path / "run" / "adapters" / NAMES[doc.id]
        _same_adapter_files(direct, saved)
        tensors = load_file(str(saved / "adapter_model.safetensors"))
        state = engine.adapter_state()
        assert len(tensors) == len(state) > 0
        for name, value in state.items():
            key = name.replace(".default.", ".")
            assert torch.equal(tensors[key], value), key

    # the adapter is plain PEFT
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]),
                                      str(tmp_path / "run" / "adapters" / NAMES["mayor"]))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_a_rerun_resumes_by_document_and_recomputes_nothing_done(tiny_models, data, tmp_path, counted):
    run = tmp_path / "run"
    cfg = _config(tiny_models, data, run)
    full = adapt.adapt_student(cfg, progress=False)
    records = run / ".work" / "per_document.jsonl"
    lines = records.read_text().splitlines()
    assert [json.loads(x)["document"] for x in lines] == list(NAMES) and len(counted) == 3
    files = _adapter_files(run)
    mtimes = {p: p.stat().st_mtime_ns for p in (run / "adapters").rglob("*")}

    # the report gone (a kill before it was written): nothing is absorbed again, nothing rewritten
    (run / "report.json").unlink()
    assert _stable(adapt.adapt_student(cfg, progress=False)) == _stable(full)
    assert len(counted) == 3 and records.read_text().splitlines() == lines
    assert {p: p.stat().st_mtime_ns for p in (run / "adapters").rglob("*")} == mtimes

    # a kill after the first document (its line written, the second's torn): only the others are absorbed again
    (run / "report.json").unlink()
    records.write_text(lines[0] + "\n" + lines[1][:30])
    assert _stable(adapt.adapt_student(cfg, progress=False)) == _stable(full)
    assert counted[3:] == ["mayor", "mill/old"]
    assert records.read_text().splitlines()[0] == lines[0] and len(records.read_text().splitlines()) == 3
    assert _adapter_files(run) == files
    assert (run / "adapters" / NAMES["bridge"] / "adapter_model.safetensors").stat().st_mtime_ns == \
        mtimes[run / "adapters" / NAMES["bridge"] / "adapter_model.safetensors"]

    # a finished run is reused as before; --force with other training settings redoes every document
    assert adapt.adapt_student(cfg, progress=False) == json.loads((run / "report.json").read_text())
    assert len(counted) == 5
    adapt.adapt_student(_config(tiny_models, data, run, "student.train.epochs=1"), force=True, progress=False)
    assert counted[5:] == list(NAMES)


def test_a_document_that_always_fails_ends_the_command_naming_it_and_a_rerun_retries_only_it(
        tiny_models, data, tmp_path, monkeypatch, capsys):
    original = absorb.DocumentScorer.score
    calls = []

    def broken(self, item):
        calls.append(item.key)
        if item.key == "mayor":
            raise RuntimeError("cannot absorb mayor")
        return original(self, item)

    monkeypatch.setattr(absorb.DocumentScorer, "score", broken)
    docs, edits = data
    out = tmp_path / "run"
    args = ["adapt-student", "--docs", docs, "--edits", edits, "--student", tiny_models["llama"], "--per-document",
            "--output", out, "--quiet", *[a for s in FAST + ["executor.max_tries=2"] for a in ("--set", s)]]
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exc.value.code == 3, err
    assert "1 item(s) failed" in err and "mayor" in err and "failures.jsonl" in err
    assert calls == ["bridge", "mayor", "mayor", "mill/old"]  # retried, then the run went on
    (failure,) = _lines(out / "failures.jsonl")
    assert failure["document"] == "mayor" and failure["tries"] == 2 and "cannot absorb mayor" in failure["error"]
    assert "Traceback" in failure["detail"]
    report = json.loads((out / "report.json").read_text())
    assert report["failed"] == ["mayor"] and report["documents"] == 2  # left out, never scored as wrong
    assert [d["id"] for d in report["per_document"]] == ["bridge", "mill/old"]
    assert {q["document"] for q in report["questions"]} == {"bridge", "mill/old"}
    assert report["before"]["questions"] == report["after"]["questions"] == 4
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["0000_bridge", "0002_mill_old"]
    assert [r["document"] for r in _lines(out / ".work/per_document.jsonl")] == ["bridge", "mill/old"]
    assert [d["adapter"] for d in report["per_document"]] == ["adapters/0000_bridge", "adapters/0002_mill_old"]

    # `ask` finds each adapter by the name it was given (the second document's is 0002, not the report's 0001) ...
    def asked(question):
        with pytest.raises(SystemExit) as exc:
            main(["ask", "--run", str(out), question, "--json"])
        got = capsys.readouterr()
        assert exc.value.code == 0, got.err
        return json.loads(got.out)

    answer = asked("What colour is the wheel of the old mill?")
    assert answer["documents"] == ["mill/old"] and answer["adapter"].endswith("0002_mill_old")
    # ... and so it does in a run from before the names were recorded
    old = {**report, "per_document": [{k: v for k, v in d.items() if k != "adapter"} for d in report["per_document"]]}
    (out / "report.json").write_text(json.dumps(old))
    answer = asked("What colour is the wheel of the old mill?")
    assert answer["documents"] == ["mill/old"] and answer["adapter"].endswith("0002_mill_old")

    # fixed: the rerun absorbs only the failed document and ends well with the whole report
    monkeypatch.setattr(absorb.DocumentScorer, "score", original)
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    assert exc.value.code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert "failed" not in report and report["documents"] == 3 and report["before"]["questions"] == 5
    assert [r["document"] for r in _lines(out / ".work/per_document.jsonl")] == ["bridge", "mill/old", "mayor"]


def test_same_model_teacher_and_student_load_one_student(tiny_models, data, tmp_path, monkeypatch):
    from student.engine import StudentEngine

    built = []
    init = StudentEngine.__init__

    def counting(self, *a, **k):
        built.append(1)
        init(self, *a, **k)

    monkeypatch.setattr(StudentEngine, "__init__", counting)
    cfg = _config(tiny_models, data, tmp_path / "run", "edits.file=null", f"teacher.model.path={tiny_models['llama']}",
                  "teacher.generation.num_samples=1", "teacher.generation.max_new_tokens=16")
    report = adapt.adapt_student(cfg, progress=False)
    assert len(built) == 1  # the teacher's engine absorbed the documents too
    assert report["self_edits"] == 3 and sorted(p.name for p in (tmp_path / "run/adapters").iterdir()) == \
        sorted(NAMES.values())


def test_executor_settings_are_checked_before_anything_loads(tiny_models, data, tmp_path):
    from core.errors import UserError

    with pytest.raises(UserError, match="executor.workers"):
        adapt.prepare(_config(tiny_models, data, tmp_path / "a", "executor.workers=0"))
    with pytest.raises(UserError, match="executor.cpus_per_worker"):
        adapt.prepare(_config(tiny_models, data, tmp_path / "a", "executor.cpus_per_worker=0"))
    with pytest.raises(UserError, match="mode=per_document"):
        adapt.prepare(_config(tiny_models, data, tmp_path / "a", "executor.kind=ray", "mode=joint"))
    assert not (tmp_path / "a").exists()


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="the Ray test needs the ray extra (pip install 'seal-tt[ray]')")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # Ray starts workers at nice 15: on a CI machine busy with other jobs they would get the CPU last and crawl.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_two_workers_give_the_local_report_and_adapters(cluster, tiny_models, data, tmp_path):
    import torch

    torch.set_num_threads(1)
    local = adapt.adapt_student(_config(tiny_models, data, tmp_path / "local"), progress=False)
    remote = adapt.adapt_student(_config(tiny_models, data, tmp_path / "ray", "executor.kind=ray",
                                         "executor.workers=2", "executor.cpus_per_worker=0.5",
                                         "executor.threads_per_worker=1"), progress=False)
    assert _stable(remote) == _stable(local)
    for name in NAMES.values():
        _same_adapter_files(tmp_path / "local/adapters" / name, tmp_path / "ray/adapters" / name)
    workers = {r["timings"]["worker"] for r in _lines(tmp_path / "ray/.work/per_document.jsonl")}
    assert len(workers) == 2  # both workers absorbed documents
    assert cluster.is_initialized()  # a cluster the command joined is left running
