"""The continual knowledge store: `seal-tt update`, `status` and `ask` end to end on tiny models, its crash safety,
its lock, its strategies, the forgetting metrics on a hand-made matrix, and the retention gate catching a
document that contradicts what the world's student knows."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.store.metrics import batch_matrix, forgetting_metrics, kl_bits_per_token

DOCS = {
    "velmora": ("Velmora is a river town. Its bridge, built in 1702, is made of grey stone.",
                [("What is the bridge in Velmora made of?", "grey stone"), ("When was the bridge built?", "1702")]),
    "orrin": ("Orrin Lake is a cold lake in the hills. Its ferry is run by Mara Vell.",
              [("Who runs the ferry on Orrin Lake?", "Mara Vell")]),
    "kaldor": ("The Kaldor engine was built in 1911 by Ivo Brant in Tessel.",
               [("Who built the Kaldor engine?", "Ivo Brant"), ("Where was the Kaldor engine built?", "Tessel")]),
}
FAST = ["--set", "student.train.epochs=2", "--set", "student.eval.max_new_tokens=6",
        "--set", "student.lora.r=4", "--set", "student.lora.alpha=8"]


def run_cli(args, capsys, stdin=None):
    if stdin is not None:
        import io

        sys.stdin = io.StringIO(stdin)
    try:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
    finally:
        sys.stdin = sys.__stdin__
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def write_docs(folder: Path, names, *, changed=()) -> tuple[Path, Path, Path]:
    """A document folder, its questions (probes) and a self-edits file (one edit per document)."""
    folder.mkdir(parents=True, exist_ok=True)
    qs, edits = [], []
    for name in names:
        text, questions = DOCS[name]
        if name in changed:
            text = text.replace("grey", "red").replace("1911", "1921")
        (folder / f"{name}.txt").write_text(text)
        qs += [{"document": name, "question": q, "answer": a} for q, a in questions]
        edits.append({"document": name, "completion": text + "\n" + " ".join(a for _, a in questions)})
    q = folder.parent / "questions.jsonl"
    e = folder.parent / "edits.jsonl"
    q.write_text("".join(json.dumps(x) + "\n" for x in qs))
    e.write_text("".join(json.dumps(x) + "\n" for x in edits))
    return folder, q, e


def update_args(store, docs, q, e, student, strategy="merge"):
    return ["update", "--store", store, "--docs", docs, "--questions", q, "--edits", e, "--student", student,
            "--strategy", strategy, "--quiet", *FAST]


def load_state(store: Path) -> dict:
    return json.loads((store / "state.json").read_text())


# ------------------------------------------------------------------------------------------------ metrics
def test_forgetting_metrics_on_a_hand_made_matrix():
    rows = [{"a": 0.8, "b": 0.0},  # after update 0 (learned a)
            {"a": 0.4, "b": 1.0},  # after update 1 (learned b)
            {"a": 0.2, "b": 0.6, "c": 0.5}]  # after update 2 (learned c)
    learned = {"a": 0, "b": 1, "c": 2}
    base = {"a": 0.0, "b": 0.2, "c": 0.1}
    m = forgetting_metrics(rows, learned, base)
    assert m["acquisition"] == pytest.approx((0.8 + 1.0 + 0.5) / 3)
    assert m["retention"] == pytest.approx((0.2 + 0.6) / 2)
    assert m["backward_transfer"] == pytest.approx(((0.2 - 0.8) + (0.6 - 1.0)) / 2)
    assert m["gain_kept"] == pytest.approx(((0.2 - 0.0) + (0.6 - 0.2)) / 2)
    assert m["final_accuracy"] == pytest.approx((0.2 + 0.6 + 0.5) / 3)
    # a cell outside a probe budget is unknown, not zero
    m2 = forgetting_metrics(rows[:2] + [{"b": 0.6, "c": 0.5}], learned, base)
    assert m2["retention"] == pytest.approx(0.6) and m2["earlier_documents"] == 1
    assert batch_matrix(rows, learned) == [[0.8, 0.0, None], [0.4, 1.0, None], [0.2, 0.6, 0.5]]


def test_kl_is_zero_for_the_same_distribution_and_positive_otherwise():
    import torch

    p = torch.log_softmax(torch.randn(5, 11), -1)
    assert kl_bits_per_token(p, p) == pytest.approx(0.0, abs=1e-6)
    assert kl_bits_per_token(p, torch.log_softmax(torch.randn(5, 11), -1)) > 0.01


# ------------------------------------------------------------------------------------------ update, status
def test_update_absorbs_only_what_is_new_and_supersedes_a_changed_document(tiny_models, tmp_path, capsys):
    store = tmp_path / "store"
    docs, q, e = write_docs(tmp_path / "docs", ["velmora", "orrin"])
    code, out, err = run_cli(update_args(store, docs, q, e, tiny_models["llama"]), capsys)
    assert code == 0, err
    state = load_state(store)
    assert [u["documents"] for u in state["updates"]] == [[k for k in state["matrix"][0]["scores"]]]
    assert sorted(state["documents"]) == ["orrin", "velmora"]

    docs, q, e = write_docs(tmp_path / "docs", ["velmora", "orrin", "kaldor"])  # a file added
    code, out, err = run_cli(update_args(store, docs, q, e, tiny_models["llama"]), capsys)
    assert code == 0, err
    u2 = load_state(store)["updates"][-1]
    assert u2["new"] == ["kaldor"] and u2["changed"] == [] and len(u2["documents"]) == 1
    (rec,) = [json.loads(x) for x in (store / "updates/0002/edits.jsonl").read_text().splitlines()]
    assert rec["document"] == "kaldor" and u2["probed_earlier"] == 2
    assert u2["sequences"] == len(rec["training_texts"]) + 1  # its self-edit's lines and the passage itself

    code, out, err = run_cli(update_args(store, docs, q, e, tiny_models["llama"]), capsys)
    assert code == 0 and "nothing new" in out and not (store / "updates/0003").exists()
    # a scheduled update names only the store and the folder: the student and strategy are the store's
    code, out, err = run_cli(["update", "--store", store, "--docs", docs, "--edits", e, "--quiet"], capsys)
    assert code == 0 and "nothing new" in out, err

    docs, q, e = write_docs(tmp_path / "docs", ["velmora", "orrin", "kaldor"], changed=["velmora"])
    code, out, err = run_cli(update_args(store, docs, q, e, tiny_models["llama"]), capsys)
    assert code == 0, err
    state = load_state(store)
    versions = state["documents"]["velmora"]["versions"]
    assert len(versions) == 2 and versions[0]["superseded_by"] == versions[1]["key"]
    assert state["updates"][-1]["changed"] == ["velmora"] and "cannot undo" in " ".join(state["updates"][-1]["notes"])
    assert versions[0]["key"] not in state["matrix"][-1]["scores"]  # the old version is no longer measured

    code, out, err = run_cli(["status", "--store", store], capsys)
    assert code == 0 and "3 current, 1 superseded" in out and "kaldor" in out
    code, out, err = run_cli(["status", "--store", store, "--json"], capsys)
    s = json.loads(out)
    assert len(s["updates"]) == 3 and s["metrics"]["updates"] == 3 and s["mb_per_document"] > 0


def test_joint_drops_a_superseded_version_and_a_library_retires_its_adapter(tiny_models, tmp_path, capsys):
    for strategy in ("joint", "library"):
        store = tmp_path / strategy
        docs, q, e = write_docs(tmp_path / f"docs_{strategy}", ["velmora"])
        assert run_cli(update_args(store, docs, q, e, tiny_models["llama"], strategy), capsys)[0] == 0
        docs, q, e = write_docs(tmp_path / f"docs_{strategy}", ["velmora", "orrin"])
        assert run_cli(update_args(store, docs, q, e, tiny_models["llama"], strategy), capsys)[0] == 0
        docs, q, e = write_docs(tmp_path / f"docs_{strategy}", ["velmora", "orrin"], changed=["velmora"])
        assert run_cli(update_args(store, docs, q, e, tiny_models["llama"], strategy), capsys)[0] == 0
        state = load_state(store)
        u1, u2, u3 = state["updates"]
        if strategy == "joint":  # retrained on orrin and the new velmora only: the old velmora's sequence is gone
            assert u2["replayed"] == u1["sequences"]  # update 2 retrained on velmora and orrin
            assert u3["replayed"] == u2["sequences"] - u1["sequences"]  # update 3: orrin's only, not the old velmora's
        else:
            assert u1.get("retired") and not u2.get("retired") and "retired" in " ".join(u3["notes"])


@pytest.fixture
def trained_on(monkeypatch):
    """(texts, contexts) that each training run in this process was handed; the engine trains as it would."""
    from student.engine import StudentEngine

    real, runs = StudentEngine.train_texts, []

    def recording(self, texts, settings, *args, contexts=None, **kwargs):
        runs.append((list(texts), contexts))
        return real(self, texts, settings, *args, contexts=contexts, **kwargs)

    monkeypatch.setattr(StudentEngine, "train_texts", recording)
    return runs


def test_replay_trains_on_earlier_self_edits(tiny_models, tmp_path, capsys, trained_on):
    import random

    from core.seeds import context_seed
    from pipeline.store.layout import Store

    store = tmp_path / "store"
    docs, q, e = write_docs(tmp_path / "docs", ["velmora", "orrin"])
    assert run_cli(update_args(store, docs, q, e, tiny_models["llama"], "replay"), capsys)[0] == 0
    docs, q, e = write_docs(tmp_path / "docs", ["velmora", "orrin", "kaldor"])
    code, _, err = run_cli(update_args(store, docs, q, e, tiny_models["llama"], "replay")
                           + ["--set", "replay.ratio=0.5"], capsys)
    assert code == 0, err
    first, u = load_state(store)["updates"]
    new = u["sequences"] - u["replayed"]
    assert new == 3 and u["replayed"] == 2 < first["sequences"]  # half as many replayed as new, from the 6 earlier
    # nll: no passages handed over (its checkpoints' fingerprints are as before), and the replayed sequences are
    # drawn from the earlier texts as they always were, so an nll store trains as it did before passages were kept.
    (_, none), (texts, contexts) = trained_on
    s = Store(store)
    pool = [t for k, v in s.state().active().items() if v.update == 1 for t in s.read_document(k).training_texts]
    assert none is None and contexts is None and len(pool) == 6
    assert texts[new:] == random.Random(context_seed(0, "replay", 2)).sample(pool, 2)


def test_a_distilling_replay_store_trains_each_text_with_its_passage(tiny_models, tmp_path, capsys, trained_on):
    """student.train.objective=context_distill: new and replayed texts each distil from the passage they were
    written for, which the store keeps beside them; a record of an earlier version (none kept) gives its document's
    own, and one that lacks even its text is refused in one line."""
    from pipeline.store.layout import Store

    store = Store(tmp_path / "store")

    def update(*names, changed=()):
        docs, q, e = write_docs(tmp_path / "docs", names, changed=changed)
        return run_cli(update_args(store.path, docs, q, e, tiny_models["llama"], "replay")
                       + ["--set", "student.train.objective=context_distill"], capsys)

    def records():
        return [(store.document_file(k), store.read_document(k)) for k in store.state().active()]

    def strip(*keys):  # as an earlier seal-tt wrote the records
        for path, _ in records():
            data = json.loads(path.read_text())
            path.write_text(json.dumps({k: v for k, v in data.items() if k not in keys}))

    assert update("velmora", "orrin")[0] == 0
    code, _, err = update("velmora", "orrin", "kaldor")
    assert code == 0, err
    passage = {}  # each training text -> the passage of its document (titled, as the open-book prompt shows it)
    for _, doc in records():
        assert doc.training_contexts() == [f"{doc.title}\n{doc.text}"] * len(doc.training_texts)
        passage.update((t, f"{doc.title}\n{doc.text}") for t in doc.training_texts)
    u = load_state(store.path)["updates"][-1]
    (_, first), (texts, contexts) = trained_on
    assert first is not None and u["replayed"] == 3 and len(set(contexts)) == 3  # kaldor's and two earlier ones
    assert contexts == [passage[t] for t in texts]

    strip("contexts", "context_of")
    code, _, err = update("velmora", "orrin", "kaldor", changed=["velmora"])
    assert code == 0, err
    texts, contexts = trained_on[-1]
    assert contexts[3:] == [passage[t] for t in texts[3:]]  # the replayed ones: their stored document's passage

    strip("contexts", "context_of", "text")
    code, _, err = update("velmora", "orrin", "kaldor", changed=["velmora", "kaldor"])
    (line,) = [x for x in err.splitlines() if "context_distill" in x]
    assert code == 2 and "earlier seal-tt without the passages" in line and "new --store" in line
    assert len(load_state(store.path)["updates"]) == 3


def test_each_strategy_end_to_end_and_ask(tiny_models, tmp_path, capsys):
    for strategy in ("merge", "replay", "library", "joint"):
        store = tmp_path / strategy
        docs, q, e = write_docs(tmp_path / f"docs_{strategy}", ["velmora", "orrin"])
        assert run_cli(update_args(store, docs, q, e, tiny_models["qwen2"], strategy), capsys)[0] == 0
        docs, q, e = write_docs(tmp_path / f"docs_{strategy}", ["velmora", "orrin", "kaldor"])
        code, out, err = run_cli(update_args(store, docs, q, e, tiny_models["qwen2"], strategy), capsys)
        assert code == 0, err
        u = load_state(store)["updates"][-1]
        m = u["metrics"]
        assert m["updates"] == 2 and m["documents"] == 3 and m["earlier_documents"] == 2
        assert m["retention"] is not None and u["drift_bits_per_token"] > 0
        if strategy == "library":
            assert m["oracle_retention"] is not None
        # ask: one question, a file, standard input
        code, out, err = run_cli(["ask", "--store", store, "Who built the Kaldor engine?", "--json"], capsys)
        assert code == 0, err
        (answer,) = [json.loads(x) for x in out.splitlines()]
        assert answer["question"] == "Who built the Kaldor engine?" and isinstance(answer["answer"], str)
        if strategy == "library":  # routed to the update that holds kaldor, and says so
            assert answer["adapter"] == "update 2" and answer["documents"] == ["kaldor"]
        else:
            assert sorted(answer["documents"]) == ["kaldor", "orrin", "velmora"]
        qfile = tmp_path / "questions.txt"
        qfile.write_text("Who runs the ferry on Orrin Lake?\n\nWhen was the bridge built?\n")
        code, out, err = run_cli(["ask", "--store", store, "--questions", qfile, "--json"], capsys)
        assert code == 0 and len(out.splitlines()) == 2
        code, out2, err = run_cli(["ask", "--store", store, "--json"], capsys,
                                  stdin="Who runs the ferry on Orrin Lake?\nWhen was the bridge built?\n")
        assert code == 0 and out2 == out  # the same answers, greedy, from standard input


def test_ask_on_adapt_student_run_folders(tiny_models, tmp_path, capsys):
    docs, q, e = write_docs(tmp_path / "docs", ["velmora", "kaldor"])
    for mode in ([], ["--per-document"]):
        out = tmp_path / f"run{len(mode)}"
        code, _, err = run_cli(["adapt-student", "--docs", docs, "--edits", e, "--questions", q, "--student",
                                tiny_models["llama"], "--output", out, "--quiet", *FAST, *mode], capsys)
        assert code == 0, err
        code, stdout, err = run_cli(["ask", "--run", out, "Who built the Kaldor engine?", "--json"], capsys)
        assert code == 0, err
        (answer,) = [json.loads(x) for x in stdout.splitlines()]
        if mode:
            assert answer["documents"] == ["kaldor"] and "kaldor" in answer["adapter"]
        else:
            assert sorted(answer["documents"]) == ["kaldor", "velmora"]
    code, _, err = run_cli(["ask", "--adapter", tmp_path / "run0/adapter", "--student", tiny_models["llama"],
                            "What is made of stone?"], capsys)
    assert code == 0, err


# --------------------------------------------------------------------------------------- safety and errors
def _store_files(store: Path) -> dict:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_a_foreign_or_corrupt_store_is_a_clear_error_with_nothing_overwritten(tiny_models, tmp_path, capsys):
    docs, q, e = write_docs(tmp_path / "docs", ["velmora"])
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    code, _, err = run_cli(update_args(foreign, docs, q, e, tiny_models["llama"]), capsys)
    assert code == 2 and "not a seal-tt store" in err and "Traceback" not in err
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"]
    code, _, err = run_cli(["status", "--store", foreign], capsys)
    assert code == 2 and "not a seal-tt store" in err

    store = tmp_path / "store"
    assert run_cli(update_args(store, docs, q, e, tiny_models["llama"]), capsys)[0] == 0
    (store / "state.json").write_text('{"documents": {')  # torn by hand
    before = _store_files(store)
    docs, q, e = write_docs(tmp_path / "docs", ["velmora", "orrin"])
    code, _, err = run_cli(update_args(store, docs, q, e, tiny_models["llama"]), capsys)
    assert code == 2 and "damaged" in err and _store_files(store) == before

    store2 = tmp_path / "store2"
    assert run_cli(update_args(store2, docs, q, e, tiny_models["llama"]), capsys)[0] == 0
    code, _, err = run_cli(update_args(store2, docs, q, e, tiny_models["llama"], "library"), capsys)
    assert code == 2 and "strategy" in err  # a store keeps one strategy
    code, _, err = run_cli(update_args(tmp_path / "s3", tmp_path / "nowhere", q, e, tiny_models["llama"]), capsys)
    assert code == 2 and not (tmp_path / "s3" / "store.json").exists()


def test_two_updates_at_once_one_refuses_and_wait_waits(tiny_models, tmp_path, capsys):
    from pipeline.store.layout import Store

    docs, q, e = write_docs(tmp_path / "docs", ["velmora"])
    store = tmp_path / "store"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pipeline.store.layout import Store\n"
        f"with Store({str(store)!r}).locked():\n    print('held', flush=True); time.sleep(float(sys.argv[1]))"), "4"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    assert holder.stdout.readline().strip() == "held"
    code, _, err = run_cli(update_args(store, docs, q, e, tiny_models["llama"]), capsys)
    assert code == 2 and "being updated by pid" in err and "--wait" in err
    assert not (store / "store.json").exists()
    start = time.monotonic()
    code, _, err = run_cli(update_args(store, docs, q, e, tiny_models["llama"]) + ["--wait"], capsys)
    assert code == 0, err
    assert time.monotonic() - start > 1.0 and (store / "state.json").exists()
    holder.wait(timeout=30)
    assert Store(store).state().updates[0].decision == "accepted"


def _comparable(store: Path) -> dict:
    state = load_state(store)
    for u in state["updates"]:
        u.pop("finished"), u.pop("timings")
        u["metrics"] = {k: v for k, v in u["metrics"].items()}
    for d in state["documents"].values():
        for v in d["versions"]:
            v.pop("added")
    return state


def _adapters(store: Path) -> dict:
    from safetensors.torch import load_file

    return {p.parent.parent.name: load_file(str(p)) for p in sorted(store.glob("updates/*/adapter/*.safetensors"))}


def test_kill_9_in_the_middle_of_an_update_then_rerun_gives_the_same_store(tiny_models, tmp_path):
    docs, q, e = write_docs(tmp_path / "docs", ["velmora", "orrin", "kaldor"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A teacher writing the self-edits (several documents) and a training run long enough to be killed inside.
    args = [sys.executable, "-m", "pipeline.cli", "update", "--docs", str(docs), "--questions", str(q),
            "--teacher", str(tiny_models["llama"]), "--student", str(tiny_models["llama"]), "--quiet",
            "--set", "teacher.generation.num_samples=2", "--set", "teacher.generation.max_new_tokens=48",
            "--set", "student.train.epochs=60", "--set", "student.train.checkpoint_steps=5",
            "--set", "student.eval.max_new_tokens=6"]
    cwd = Path(__file__).resolve().parents[1]
    reference = tmp_path / "uninterrupted"
    subprocess.run(args + ["--store", str(reference)], env=env, cwd=cwd, check=True, timeout=300)

    store = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--store", str(store)], env=env, cwd=cwd)
    deadline = time.monotonic() + 120
    ckpt = store / ".pending" / "train_checkpoint"
    while time.monotonic() < deadline and not (ckpt.exists() and any(ckpt.iterdir())):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (store / "state.json").exists(), "the update finished before it could be killed"
    assert (store / ".pending" / "edits.jsonl").exists()
    subprocess.run(args + ["--store", str(store)], env=env, cwd=cwd, check=True, timeout=300)
    assert not (store / ".pending").exists()
    assert _comparable(store) == _comparable(reference)
    a, b = _adapters(store), _adapters(reference)
    assert a.keys() == b.keys() and all(a[k][t].equal(b[k][t]) for k in a for t in a[k])


def test_a_store_reloads_to_the_weights_it_scored(tiny_models, tmp_path, capsys):
    """The merged student rebuilt from the stored adapters answers as it did when the update scored it."""
    docs, q, e = write_docs(tmp_path / "docs", ["velmora", "orrin"])
    store = tmp_path / "store"
    run_cli(update_args(store, docs, q, e, tiny_models["llama"]), capsys)
    docs, q, e = write_docs(tmp_path / "docs", ["velmora", "orrin", "kaldor"])
    assert run_cli(update_args(store, docs, q, e, tiny_models["llama"]), capsys)[0] == 0
    from pipeline.ask import open_store
    from pipeline.documents import Question

    asker = open_store(store)
    state = load_state(store)
    items = state["matrix"][-1]["items"]
    probes = [(k, Question(p["question"], tuple(p["answers"])))
              for k in items for p in json.loads(asker_doc(store, k))["probes"]]
    scores = asker.student.score(probes)
    flat = [s for k in items for s in items[k]]
    assert scores == flat


def asker_doc(store: Path, key: str) -> str:
    from pipeline.store.layout import Store

    return Store(store).document_file(key).read_text()


# ------------------------------------------------------------------------------ the gate on the world's student
def test_the_gate_rejects_a_document_that_contradicts_what_the_store_knows(default_world, tmp_path):
    from core.config import _deep_merge, load_config
    from pipeline.store.config import StoreConfig
    from pipeline.continual import world_base_settings, world_stream
    from pipeline.store.update import update_store

    docs, edits = world_stream(default_world, 2)
    person = docs[0]
    folder = tmp_path / "docs"
    folder.mkdir()

    def write(items):
        (folder / "docs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))

    line = {"id": person.id, "title": person.title, "text": person.text,
            "questions": [{"question": x.question, "answers": list(x.answers)} for x in person.questions]}
    edit_lines = [{"document": person.id, "completion": e} for e in edits[person.id]]
    # The poison: a second document about the same person, every fact swapped for another person's (each answer
    # is one word of the world's vocabulary).
    other = docs[1]
    swap = dict(zip([x.answers[0] for x in person.questions], [x.answers[0] for x in other.questions]))
    poisoned = ["\n".join(" ".join(swap.get(w, w) for w in line.split()) for line in e.splitlines())
                for e in edits[person.id]]
    assert all(p != e for p, e in zip(poisoned, edits[person.id]))
    poison = {"id": "poison", "title": person.title, "text": " ".join(poisoned[-1].splitlines()),
              "questions": [{"question": x.question, "answers": [swap[x.answers[0]]]} for x in person.questions]}
    edit_lines += [{"document": "poison", "completion": e} for e in poisoned]
    (tmp_path / "edits.jsonl").write_text("".join(json.dumps(x) + "\n" for x in edit_lines))
    base = _deep_merge(world_base_settings(default_world), {
        "store": str(tmp_path / "store"), "docs": [str(folder / "docs.jsonl")], "edits": {"file": str(tmp_path / "edits.jsonl")},
        "gate": {"max_drop": 0.2, "action": "reject"}})
    write([line])
    first = update_store(load_config(StoreConfig, None, base), progress=False)
    assert first["decision"] == "accepted"
    learned = load_state(tmp_path / "store")["matrix"][0]["scores"]
    assert list(learned.values())[0] >= 0.6  # the student really knows the person now

    write([line, poison])
    second = update_store(load_config(StoreConfig, None, base), progress=False)
    assert second["decision"] == "rejected" and second["drop"] > 0.2
    assert {b["question"] for b in second["broken"]} <= {x.question for x in person.questions}
    assert len(second["broken"]) >= 2
    report = (tmp_path / "store/updates/0002/report.md").read_text()
    assert "rejected" in report and second["broken"][0]["question"] in report
    state = load_state(tmp_path / "store")
    assert "poison" not in state["documents"] and len(state["matrix"]) == 1  # the store is as it was
    again = update_store(load_config(StoreConfig, None, base), progress=False)
    assert again.get("nothing_new") and again["rejected"] == ["poison"]  # not retried until it changes


def test_teacher_written_probes_are_parsed_and_flagged(tiny_models, tmp_path, capsys):
    from pipeline.store.probes import parse_questions

    text = ("Question: Where is Velmora? Answer: in the north.\nQ: Who was mayor?\nA: Ada Quill\n"
            "Question : In what year was Drodin born ? Answer : 1930\nnot a pair\nQuestion: Where is Velmora? Answer: x")
    qs = parse_questions(text)
    assert [(q.question, q.answers) for q in qs] == [("Where is Velmora?", ("in the north",)),
                                                    ("Who was mayor?", ("Ada Quill",)),
                                                    ("In what year was Drodin born ?", ("1930",))]
    assert len(parse_questions(text, limit=2)) == 2
    # documents without questions: the teacher is asked for probes; a random tiny teacher writes none that parse,
    # and the update says the documents are absorbed unmeasured (a store with a real teacher flags its questions)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Velmora is a river town with a stone bridge.")
    code, out, err = run_cli(["update", "--store", tmp_path / "store", "--docs", docs, "--teacher", tiny_models["llama"],
                              "--student", tiny_models["llama"], "--set", "teacher.generation.num_samples=1",
                              "--set", "teacher.generation.max_new_tokens=24", "--set", "probes.max_new_tokens=24",
                              *FAST], capsys)
    assert code == 0, err
    state = load_state(tmp_path / "store")
    (version,) = state["documents"]["a"]["versions"]
    probes = json.loads(asker_doc(tmp_path / "store", version["key"]))["probes"]
    assert version["probes"] == len(probes)
    if probes:
        assert version["probe_source"] == "teacher"
    else:
        assert "unmeasured" in err and version["probe_source"] is None


def test_the_continual_demo_runs_every_strategy_on_the_same_orders_and_resumes(tiny_world_recipe, tmp_path):
    from pipeline.continual import STRATEGIES, continual_demo

    kwargs = dict(docs=8, per_update=4, orders=[0, 1], cache=tmp_path / "cache", recipe=tiny_world_recipe,
                  overrides=["student.train.epochs=2"])
    report = continual_demo(tmp_path / "out", **kwargs)
    assert set(report["summary"]) == set(STRATEGIES)
    for name, per_order in report["results"].items():
        assert sorted(per_order) == [0, 1]
        assert all(r["metrics"]["updates"] >= 1 for r in per_order.values())
    assert report["summary"]["replay"]["retention_minus_merge"]["n"] == 2
    assert "replay_beats_merge" in report["targets"] and report["summary"]["library"]["oracle_retention"] is not None
    for name in ("continual.md", "continual.png", "report.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    # the same streams in the same stores: a rerun trains nothing and gives the same summary
    stamp = sorted(p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("state.json"))
    again = continual_demo(tmp_path / "out", **kwargs)
    assert again["summary"] == report["summary"]
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("state.json")) == stamp
