"""The E-step's executors: the local loop and Ray workers give the same records; faults are retried or recorded.

One real local Ray cluster for the whole module (2 CPUs, fractional-CPU workers, a small object store, no
dashboard); real tiny students in real worker processes; a worker that dies really exits its process.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import EvalSettings, ExecutorSettings, LoraSettings, ModelSettings, SelfEditSettings, TrainSettings
from pipeline.documents import load_documents
from pipeline.executor import LocalExecutor
from pipeline.work import WorkItem
from pipeline.tasks.knowledge import KnowledgeTask
from tests.test_train_teacher import SMALL, _jsonl, _stable

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra (pip install 'seal-tt[ray]')")

LORA = LoraSettings(r=4, alpha=8)
RAY = dict(kind="ray", cpus_per_worker=0.5, threads_per_worker=1, max_tries=2, max_restarts=2)


@pytest.fixture(scope="module")
def cluster():
    # Test tasks below are pickled by value: worker processes need not import this test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # Ray starts workers at nice 15: on a CI machine busy with other jobs they would get the CPU last and crawl.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def _task():
    return KnowledgeTask(SelfEditSettings(), TrainSettings(epochs=1, learning_rate=1e-3),
                         EvalSettings(max_new_tokens=4, use_chat_template="never", metric="token_f1"))


def _items(squad_file, n_docs=3):
    docs = load_documents(squad_file, limit=n_docs)
    items = []
    for d in docs:
        sentences = [s.strip() for s in d.text.split(". ") if s.strip()]
        for k in range(2):
            text = "\n".join(sentences[k::2][:3]) or d.text
            items.append(WorkItem(f"r1/e_step/{d.id}/{k}", d, {"context": d.id, "sample": k, "prompt": "p",
                                                              "self_edit": text}, [7]))
    return items


def _records(results):
    out = {}
    for item, rec, failure in results:
        assert failure is None, failure
        out[item.key] = {k: v for k, v in rec.items() if k != "timings"}
    return out


class _Hooked(KnowledgeTask):
    """The tests' knowledge task (`_task()`), with scoring to be overridden."""

    def __init__(self):
        t = _task()
        super().__init__(t.self_edit, t.train, t.eval)


class DiesOnce(_Hooked):
    """The worker process exits in the middle of its first item (a marker file says it already died once)."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def score(self, engine, doc, prepared, seed):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text("died")
            os._exit(1)
        return super().score(engine, doc, prepared, seed)


class AlwaysRaises(_Hooked):
    def __init__(self, bad: str):
        super().__init__()
        self.bad = bad

    def score(self, engine, doc, prepared, seed):
        if doc.id == self.bad:
            raise RuntimeError(f"cannot score {doc.id}")
        return super().score(engine, doc, prepared, seed)


class CannotRestart(DiesOnce):
    """Dies mid-item like DiesOnce, and its restarted worker cannot start again: its start raises or never ends."""

    def __init__(self, marker: str, how: str):
        super().__init__(marker)
        self.how = how

    @property
    def scorer_class(self):  # read once as a worker starts (pipeline.work.make_scorer)
        if os.path.exists(self.marker):
            if self.how == "raises":
                raise RuntimeError("this worker cannot start again")
            time.sleep(3600)
        return None


def test_ray_records_equal_local_records_on_one_and_two_workers(cluster, tiny_models, squad_file):
    import torch

    from pipeline.ray_executor import RayExecutor

    student = ModelSettings(path=str(tiny_models["llama"]))
    items = _items(squad_file)
    torch.set_num_threads(1)
    local = _records(LocalExecutor(_task(), LORA).run(student, items))
    for workers in (1, 2):
        seen = set()
        results = list(RayExecutor(_task(), LORA, ExecutorSettings(**RAY, workers=workers)).run(student, items))
        for _, rec, _ in results:
            seen.add(rec["timings"]["worker"])
        assert _records(results) == local, f"{workers} worker(s)"
        assert len(seen) == workers  # every worker took items
    assert len(local) == 6 and all(r["valid"] for r in local.values())


def test_a_worker_that_dies_mid_item_is_restarted_and_the_item_completes(cluster, tiny_models, squad_file, tmp_path):
    from pipeline.ray_executor import RayExecutor

    student = ModelSettings(path=str(tiny_models["llama"]))
    items = _items(squad_file, n_docs=2)
    marker = tmp_path / "died"
    results = list(RayExecutor(DiesOnce(str(marker)), LORA, ExecutorSettings(**{**RAY, "max_tries": 3}, workers=1))
                   .run(student, items))
    assert marker.exists(), "no worker died: the test did not test a death"
    assert _records(results) == _records(LocalExecutor(_task(), LORA).run(student, items))


@pytest.mark.parametrize("how", ["raises", "hangs"])
def test_a_worker_that_cannot_restart_ends_the_phase_with_its_items_failed(cluster, tiny_models, squad_file,
                                                                          tmp_path, how):
    from pipeline.ray_executor import RayExecutor

    student = ModelSettings(path=str(tiny_models["llama"]))
    items = _items(squad_file, n_docs=2)
    marker = tmp_path / "died"
    executor = RayExecutor(CannotRestart(str(marker), how), LORA,
                           ExecutorSettings(**RAY, workers=1, ping_timeout_s=1.0))
    results = list(executor.run(student, items))
    assert marker.exists(), "no worker died: the test did not test a death"
    since_death = time.time() - marker.stat().st_mtime
    assert since_death < 30  # not waiting on the worker, whose first start took the rest
    failed = [f for _, rec, f in results if rec is None]
    assert sorted(f.key for f in failed) == sorted(i.key for i in items)
    assert all("no Ray worker left" in f.error for f in failed)


def test_an_item_that_always_raises_is_a_recorded_failure_and_the_rest_completes(cluster, tiny_models, squad_file):
    from pipeline.ray_executor import RayExecutor

    student = ModelSettings(path=str(tiny_models["llama"]))
    items = _items(squad_file)
    bad = items[0].context.id
    for executor in (RayExecutor(AlwaysRaises(bad), LORA, ExecutorSettings(**RAY, workers=2)),
                     LocalExecutor(AlwaysRaises(bad), LORA, ExecutorSettings(max_tries=2))):
        results = list(executor.run(student, items))
        failed = [f for _, _, f in results if f is not None]
        assert sorted(f.key for f in failed) == sorted(i.key for i in items if i.context.id == bad)
        assert all(f.tries == 2 and f"cannot score {bad}" in f.error for f in failed)
        assert sum(rec is not None for _, rec, _ in results) == len(items) - 2


def test_a_user_error_inside_a_worker_ends_the_phase_with_that_error(cluster, tiny_models, squad_file):
    from core.errors import UserError
    from pipeline.documents import Document, Question
    from pipeline.ray_executor import RayExecutor

    task = KnowledgeTask(SelfEditSettings(), TrainSettings(epochs=1),
                         EvalSettings(max_new_tokens=4, use_chat_template="never", metric="answer_rank"))
    lonely = Document("lonely", "", "One fact.", [Question("Which fact?", ("one",))])
    item = WorkItem("r1/e_step/lonely/0", lonely, {"context": "lonely", "sample": 0, "prompt": "p",
                                                   "self_edit": "One fact is here."}, [1])
    with pytest.raises(UserError, match="two questions"):
        list(RayExecutor(task, LORA, ExecutorSettings(**RAY, workers=1)).run(
            ModelSettings(path=str(tiny_models["llama"])), [item]))


def test_a_context_distill_student_scores_on_ray_as_on_the_local_loop(cluster, tiny_models, squad_file):
    """student.train.objective=context_distill reaches the task's scoring inside a Ray worker: each self-edit is
    distilled with its passage there as in this process."""
    import dataclasses

    import torch

    from pipeline.ray_executor import RayExecutor

    t = _task()
    task = KnowledgeTask(t.self_edit, dataclasses.replace(t.train, objective="context_distill"), t.eval)
    student = ModelSettings(path=str(tiny_models["llama"]))
    items = _items(squad_file, n_docs=1)
    torch.set_num_threads(1)
    local = _records(LocalExecutor(task, LORA).run(student, items))
    remote = _records(RayExecutor(task, LORA, ExecutorSettings(**RAY, workers=1)).run(student, items))
    assert remote == local and len(local) == 2 and all(r["valid"] and r["scores"] for r in local.values())


def test_more_workers_than_the_cluster_holds_is_said_not_waited_on(cluster):
    from core.errors import UserError
    from pipeline.ray_executor import RayExecutor

    with pytest.raises(UserError, match="need 3 CPUs"):
        RayExecutor(_task(), LORA, ExecutorSettings(kind="ray", workers=3, cpus_per_worker=1.0)).placement()


def _cmd(tiny_models, squad_file, out, *extra):
    exe = Path(sys.executable).with_name("seal-tt")
    return [str(exe), "train-teacher", "--docs", str(squad_file), "--teacher", str(tiny_models["qwen2"]),
            "--student", str(tiny_models["llama"]), "--rounds", "1", "--output", str(out), "--quiet", *SMALL,
            "--set", "data.contexts_per_round=3", "--set", "rest_em.seeds_per_edit=1", *extra]


RAY_CLI = ["--set", "executor.kind=ray", "--set", "executor.workers=2", "--set", "executor.cpus_per_worker=0.5",
           "--set", "executor.num_cpus=2", "--set", "executor.object_store_mb=80"]


def test_driver_killed_mid_round_then_rerun_gives_the_local_records_without_duplicates(
        cluster, tiny_models, squad_file, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    local = tmp_path / "local"
    subprocess.run(_cmd(tiny_models, squad_file, local), check=True, env=env, capture_output=True)

    cut = tmp_path / "ray"
    proc = subprocess.Popen(_cmd(tiny_models, squad_file, cut, *RAY_CLI), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    records = cut / "round_1/e_step.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) >= 3:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the cluster it started
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 3 <= len(_jsonl(records)) < 9

    done = subprocess.run(_cmd(tiny_models, squad_file, cut, *RAY_CLI), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("round_1/e_step.jsonl", "round_1/heldout.jsonl", "round_0/heldout.jsonl", "baselines.jsonl"):
        a, b = _stable(_jsonl(local / name)), _stable(_jsonl(cut / name))
        key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
        assert len(b) == len({(r.get("context"), r.get("sample"), r.get("student")) for r in b}), f"{name}: duplicates"
        assert sorted(a, key=key) == sorted(b, key=key), name
    assert _jsonl(local / "metrics.jsonl")[-1]["heldout"] == _jsonl(cut / "metrics.jsonl")[-1]["heldout"]


class FailsOn:
    """A real knowledge task whose scoring of one context always raises (a bug, a broken document, ...)."""

    def __init__(self, task, bad: str):
        self._task, self.bad = task, bad

    def __getattr__(self, name):
        return getattr(self._task, name)

    def score(self, engine, doc, prepared, seed):
        if doc.id == self.bad:
            raise RuntimeError(f"cannot score {doc.id}")
        return self._task.score(engine, doc, prepared, seed)


def test_rest_em_records_failed_items_goes_on_and_ends_naming_them(tiny_models, squad_file, tmp_path):
    from core.config import load_config
    from pipeline.settings import TrainTeacherConfig
    from core.errors import ItemsFailed
    from pipeline.rest_em import RestEM
    from pipeline.train_teacher import prepare

    sets = [a for a in SMALL if a != "--set"] + ["data.contexts_per_round=3", "rest_em.seeds_per_edit=1",
                                                  "executor.max_tries=2"]
    cfg = load_config(TrainTeacherConfig, None, sets + [
        f"data.docs=[{squad_file}]", f"teacher.model.path={tiny_models['qwen2']}",
        f"student.model.path={tiny_models['llama']}", "rounds=1", f"output={tmp_path / 'run'}"])
    task, rounds, heldout = prepare(cfg)
    bad = rounds[0][1].id
    with pytest.raises(ItemsFailed, match=f"3 item\\(s\\) failed.*r1/e_step/{bad}/0"):
        RestEM(cfg, FailsOn(task, bad), rounds, heldout, progress=False).run()
    run = tmp_path / "run"
    failures = _jsonl(run / "round_1/failures.jsonl")
    assert sorted((f["context"], f["sample"]) for f in failures) == [(bad, 0), (bad, 1), (bad, 2)]
    assert all(f["tries"] == 2 and "cannot score" in f["error"] and "Traceback" in f["detail"] for f in failures)
    e_step = _jsonl(run / "round_1/e_step.jsonl")
    assert len(e_step) == 6 and bad not in {r["context"] for r in e_step}  # never scored as "wrong"
    metrics = _jsonl(run / "metrics.jsonl")
    assert metrics[-1]["e_step"]["failed"] == 3 and metrics[-1]["e_step"]["self_edits"] == 6
    assert (run / "round_1/m_step.json").exists()  # the round went on
    with pytest.raises(ItemsFailed):  # a rerun says so again rather than exit 0 over missing records
        RestEM(cfg, FailsOn(task, bad), rounds, heldout, progress=False).run()
