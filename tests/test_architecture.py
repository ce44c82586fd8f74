"""The package layers hold: pipeline -> teacher | student -> core, teacher and student independent, no circles.

`lint-imports` (run by `make test` before pytest) checks the contracts in pyproject.toml; these tests check that no
module-level circle exists anywhere (a finer check than import-linter's sibling packages) and that the contracts
really catch a violation hidden in a function body.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "teacher", "student", "core")


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_module_imports_itself_back():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    class Graph:
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, m):
            return self.edges.get(m, set())

    assert _cycles(Graph()) == [["a", "b", "c"]]


@pytest.mark.parametrize("victim, line, broken", [
    ("teacher/prompts.py", "from student import engine", "The teacher and the student never import each other"),
    ("core/seeds.py", "import pipeline.adapt", "The ground layer imports no role and no workflow"),
    ("core/rundir.py", "from core import adapters", "No import circles"),
])
def test_a_deferred_import_that_breaks_a_layer_fails_lint_imports(tmp_path, victim, line, broken):
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    # Hidden inside a function, where a reader's eye skips it; the contract must still see it.
    with open(tmp_path / victim, "a", encoding="utf-8") as f:
        f.write(f"\n\ndef _sneaky():\n    {line}\n")
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert broken in out and "BROKEN" in out, out


# ----------------------------------------------------------------------------------------------- code shape
# Sizes come from benchmarks/structure.py, the script the closing notes quote, so the test and the figures agree.
sys.path.insert(0, str(REPO / "benchmarks"))
import structure  # noqa: E402

# Each entry is a debt with its reason; the list only shrinks. A module here may not grow past its recorded size.
LONG_MODULES = {
    "student/engine.py": (660, "one class over the model, its adapter, training loops and generation"),
    "core/config.py": (440, "the typed loader and the settings blocks both roles share"),
    "pipeline/cli.py": (580, "one thin Typer function per command; their options are the length"),
    "pipeline/rest_em.py": (520, "the ReST-EM class: methods named for the algorithm, each short"),
    "pipeline/rewards.py": (430, "the reward evaluators, one small class each"),
    "pipeline/tasks/arc/augment.py": (420, "ARC's geometric and colour augmentations, one small function each"),
}
LONG_FUNCTIONS = {
    "student/distributed.py train_lora_sharded": (145, "the per-rank DeepSpeed training job, run in a child process"),
    "pipeline/ray_executor.py run": (125, "the Ray scheduling loop: submit, wait, restart dead workers, collect"),
    "student/batched.py train_many": (90, "the batched multi-LoRA training loop, kept whole for its benchmark"),
}


def test_no_module_over_400_lines_outside_the_allowlist():
    over = {m: n for n, m in structure.analyse()["sizes"] if n > structure.LONG_MODULE}
    unlisted = {m: n for m, n in over.items() if m not in LONG_MODULES}
    grown = {m: n for m, n in over.items() if m in LONG_MODULES and n > LONG_MODULES[m][0]}
    assert not unlisted, f"modules over {structure.LONG_MODULE} lines: {unlisted}"
    assert not grown, f"allowlisted modules grew past their recorded size: {grown}"


def test_no_function_over_80_lines_outside_the_allowlist():
    found = {}
    for n, where in structure.analyse()["long_functions"]:
        path, rest = where.split(":", 1)
        found[f"{path} {rest.split(' ', 1)[1]}"] = n
    unlisted = {f: n for f, n in found.items() if f not in LONG_FUNCTIONS}
    grown = {f: n for f, n in found.items() if f in LONG_FUNCTIONS and n > LONG_FUNCTIONS[f][0]}
    assert not unlisted, f"functions over {structure.LONG_FUNCTION} lines: {unlisted}"
    assert not grown, f"allowlisted functions grew past their recorded size: {grown}"


def test_the_size_checks_see_a_long_function(tmp_path, monkeypatch):
    (tmp_path / "pipeline").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(90))
    (tmp_path / "pipeline" / "big.py").write_text(f"def big():\n{body}\n" + "\n" * 400, encoding="utf-8")
    monkeypatch.setattr(structure, "ROOT", tmp_path)
    monkeypatch.setattr(structure, "PACKAGES", ("pipeline",))
    a = structure.analyse()
    assert a["long_functions"][0][1] == "pipeline/big.py:1 big"
    assert a["sizes"][0] == (491, "pipeline/big.py")  # 1 + 90 + 400 blank lines


def test_strategy_branches_live_only_in_the_store_strategy_classes():
    import re

    branch = re.compile(r"strategy\s*(==|!=|\bin\b|\bnot in\b)")
    found = []
    for path in structure.modules():
        rel = path.relative_to(REPO).as_posix()
        if rel == "pipeline/store/strategies.py":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if branch.search(line.split("#", 1)[0]):
                found.append(f"{rel}:{i}: {line.strip()}")
    assert not found, "branch on the store's strategy outside pipeline/store/strategies.py:\n" + "\n".join(found)
