"""Mistakes a user makes with files and adapters: each is one line on stderr (`error: ...`) and exit code 2, never a
traceback. Among them the quiet one: an adapter trained on another model of the same shape, which would load and
answer nonsense, is refused unless forced.

Through the real command line, on tiny models; one small adapted run (a joint adapter) is shared by the module.
"""

import json
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.test_store import FAST, run_cli, write_docs


def _cli(args) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code


@pytest.fixture(scope="module")
def adapted(tiny_models, tmp_path_factory):
    """{"run", "adapter", "docs", "edits"}: adapt-student --edits on the tiny llama (a joint adapter)."""
    root = tmp_path_factory.mktemp("adapted")
    docs, q, e = write_docs(root / "docs", ["kaldor"])
    run = root / "run"
    assert _cli(["adapt-student", "--docs", docs, "--edits", e, "--student", tiny_models["llama"], "--output", run,
                 "--quiet", *FAST]) == 0
    return {"run": run, "adapter": run / "adapter", "docs": docs, "edits": e}


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory):
    """A tiny llama of the same config as the session's, from another seed: `seal-tt init-tiny --seed 1`."""
    out = tmp_path_factory.mktemp("seed1")
    assert _cli(["init-tiny", out, "--arch", "llama", "--seed", "1"]) == 0
    return out / "llama"


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A tiny llama of another shape (half the width)."""
    from core.tiny import TinyShape, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("wide") / "llama", "llama",
                            shape=TinyShape(hidden_size=32, intermediate_size=64))


def user_error(args, capsys, *needles) -> str:
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    return err


def _unrecorded(adapter: Path, where: Path) -> Path:
    """A copy of `adapter` as another tool would have written it: no record of its base."""
    shutil.copytree(adapter, where)
    (where / "seal_tt_base.json").unlink()
    return where


# ------------------------------------------------------------------------------------------------ files
def test_files_in_another_encoding(tiny_models, adapted, tmp_path, capsys):
    latin = "caf\xe9 au lait".encode("latin-1")
    edits = tmp_path / "edits.jsonl"
    edits.write_bytes(b'{"document": "kaldor", "completion": "' + latin + b'"}\n')
    paper = tmp_path / "paper.json"
    paper.write_bytes(b'[{"title": "' + latin + b'", "context": "x", "completions": ["y"]}]')
    text = tmp_path / "latin.txt"
    text.write_bytes(latin + b"\n")
    llama = tiny_models["llama"]
    user_error(["adapt-student", "--docs", adapted["docs"], "--edits", edits, "--student", llama, "--output",
                tmp_path / "o1", "--quiet"], capsys, edits, "UTF-8")
    user_error(["adapt-student", "--edits", paper, "--student", llama, "--output", tmp_path / "o2", "--quiet"],
               capsys, paper, "UTF-8")
    user_error(["init-tiny", tmp_path / "m", "--corpus", text], capsys, text, "UTF-8")
    user_error(["ask", "--adapter", adapted["adapter"], "--student", llama, "--questions", text], capsys, text,
               "UTF-8")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "m").exists()


def test_questions_files_that_are_not_json_or_not_a_list(tiny_models, adapted, tmp_path, capsys):
    cases = {"broken.json": ('[{"question": "Who?"},', "not valid JSON"),
             "object.json": ('{"question": "Who?"}', "expected a JSON list"),
             "text.json": ('"Who built it?"', "expected a JSON list"),
             "broken.jsonl": ('{"question": "Who?"}\n{"question": \n', "line 2 is not valid JSON")}
    for name, (content, needle) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        user_error(["ask", "--adapter", adapted["adapter"], "--student", tiny_models["llama"], "--questions", path],
                   capsys, path, needle)


def test_a_malformed_adapter_config(tiny_models, adapted, tmp_path, capsys):
    llama = tiny_models["llama"]
    for name, content, needle in [("broken", '{"r": 4,', "not valid JSON"), ("list", "[4]", "not a JSON object"),
                                  ("no_rank", '{"peft_type": "LORA"}', "not a LoRA config")]:
        adapter = tmp_path / name
        shutil.copytree(adapted["adapter"], adapter)
        (adapter / "adapter_config.json").write_text(content)
        user_error(["ask", "--adapter", adapter, "--student", llama, "Who built it?"], capsys, adapter, needle)
        if name == "broken":
            user_error(["merge", "--base", llama, "--adapter", adapter, "--output", tmp_path / "m"], capsys,
                       adapter, needle)
            user_error(["adapt-student", "--docs", adapted["docs"], "--teacher", adapter, "--student", llama,
                        "--output", tmp_path / "o", "--quiet"], capsys, adapter, needle)


# --------------------------------------------------------------------------------------- another base
def test_an_adapter_on_a_base_of_another_shape(adapted, wide, tmp_path, capsys):
    recorded = adapted["adapter"]
    user_error(["ask", "--adapter", recorded, "--student", wide, "Who built it?"], capsys, recorded, wide,
               "hidden_size 64 vs 32")
    user_error(["merge", "--base", wide, "--adapter", recorded, "--output", tmp_path / "m1", "--force"], capsys,
               recorded, wide, "cannot be applied")  # --force never applies another shape
    # an adapter from elsewhere (no record): PEFT's size mismatch, said in one line naming both
    bare = _unrecorded(recorded, tmp_path / "bare")
    user_error(["ask", "--adapter", bare, "--student", wide, "Who built it?"], capsys, bare, wide, "(4, 64)")
    user_error(["merge", "--base", wide, "--adapter", bare, "--output", tmp_path / "m2"], capsys, bare, wide,
               "[4, 64]")
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


def test_an_adapter_of_another_model_of_the_same_shape_is_refused_unless_forced(tiny_models, adapted, other_seed,
                                                                               tmp_path, capsys):
    assert json.loads((other_seed / "config.json").read_text()) == \
        json.loads((Path(tiny_models["llama"]) / "config.json").read_text())
    adapter = adapted["adapter"]
    question = "Who built the Kaldor engine?"
    user_error(["ask", "--adapter", adapter, "--student", other_seed, question], capsys, adapter, other_seed,
               tiny_models["llama"], "--force")
    code, out, err = run_cli(["ask", "--adapter", adapter, "--student", other_seed, question, "--force"], capsys)
    assert code == 0 and out.strip() and err.startswith("warning: ") and str(other_seed) in err, err

    user_error(["merge", "--base", other_seed, "--adapter", adapter, "--output", tmp_path / "m"], capsys, adapter,
               other_seed)
    assert not (tmp_path / "m").exists()
    code, out, err = run_cli(["merge", "--base", other_seed, "--adapter", adapter, "--output", tmp_path / "m",
                              "--force"], capsys)
    assert code == 0 and (tmp_path / "m" / "model.safetensors").is_file() and "warning: " in err, err

    # on its own base it loads quietly; an adapter that records no base loads anywhere it fits, as before
    code, _, err = run_cli(["ask", "--adapter", adapter, "--student", tiny_models["llama"], question], capsys)
    assert code == 0 and not err, err
    bare = _unrecorded(adapter, tmp_path / "bare")
    code, _, err = run_cli(["ask", "--adapter", bare, "--student", other_seed, question], capsys)
    assert code == 0 and "warning" not in err, err


def test_a_run_whose_student_changed_since_is_refused_also_from_its_provenance(tiny_models, other_seed, tmp_path,
                                                                                capsys):
    student = tmp_path / "student"
    shutil.copytree(tiny_models["llama"], student)
    docs, q, e = write_docs(tmp_path / "docs", ["kaldor"])
    run = tmp_path / "run"
    assert run_cli(["adapt-student", "--docs", docs, "--edits", e, "--student", student, "--output", run, "--quiet",
                    *FAST], capsys)[0] == 0
    question = "Who built the Kaldor engine?"
    assert run_cli(["ask", "--run", run, question], capsys)[0] == 0

    shutil.copy(other_seed / "model.safetensors", student / "model.safetensors")  # replaced in place
    user_error(["ask", "--run", run, question], capsys, run / "adapter", student)
    (run / "adapter" / "seal_tt_base.json").unlink()  # a run from before adapters recorded their base
    user_error(["ask", "--run", run, question], capsys, run / "adapter", student)
    code, _, err = run_cli(["ask", "--run", run, question, "--force"], capsys)
    assert code == 0 and err.startswith("warning: "), err
