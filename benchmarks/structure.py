"""The code's shape: module sizes, long functions, and functions handed a whole command config for a few fields.

    python benchmarks/structure.py            # a table per question, for pipeline/, core/, teacher/, student/

"Handed a whole command config": a function with a parameter named `config` (or annotated with one of the command
configs) that reads three or fewer distinct attribute paths from it (`config.student.train` counts as one path) —
the sign of a helper that should take the settings it uses instead.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "core", "teacher", "student")
COMMAND_CONFIGS = {"AdaptConfig", "TrainTeacherConfig", "StoreConfig"}
LONG_FUNCTION, LONG_MODULE = 80, 400


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _config_param(fn) -> str | None:
    for arg in fn.args.args + fn.args.kwonlyargs:
        ann = ast.unparse(arg.annotation) if arg.annotation is not None else ""
        # A `config` typed as something else (a DeepSpeed dict, a tracker's dict) is not a command config.
        if any(c in ann for c in COMMAND_CONFIGS) or (arg.arg == "config" and not ann):
            return arg.arg
    return None


def _paths_read(fn, name: str) -> set[str]:
    """Attribute paths read from `name` (`config.a.b` -> "a.b"; `config.a` -> "a")."""
    out = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Attribute):
            chain = []
            cur = node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == name:
                out.add(".".join(reversed(chain[-2:] if len(chain) >= 2 else chain)))
    # Keep the longest paths only: `a` read as part of `a.b` is not a separate field.
    return {p for p in out if not any(q != p and q.startswith(p + ".") for q in out)}


def analyse() -> dict:
    sizes, long_fns, narrow = [], [], []
    for path in modules():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        sizes.append((len(text.splitlines()), rel))
        tree = ast.parse(text)
        for fn in functions(tree):
            n = fn.end_lineno - fn.lineno + 1
            if n > LONG_FUNCTION:
                long_fns.append((n, f"{rel}:{fn.lineno} {fn.name}"))
            name = _config_param(fn)
            if name is not None:
                paths = _paths_read(fn, name)
                passed_on = any(isinstance(a, ast.Name) and a.id == name
                                for c in ast.walk(fn) if isinstance(c, ast.Call) for a in c.args)
                if len(paths) <= 3 and not passed_on:
                    narrow.append((len(paths), f"{rel}:{fn.lineno} {fn.name} reads {sorted(paths)}"))
    return {"sizes": sorted(sizes, reverse=True), "long_functions": sorted(long_fns, reverse=True),
            "narrow_config": sorted(narrow)}


def main() -> None:
    a = analyse()
    total = sum(n for n, _ in a["sizes"])
    big = [(n, m) for n, m in a["sizes"] if n > LONG_MODULE]
    print(f"modules: {len(a['sizes'])}, lines: {total}, over {LONG_MODULE} lines: {len(big)}")
    for n, m in a["sizes"][:12]:
        print(f"  {n:5d}  {m}")
    print(f"functions over {LONG_FUNCTION} lines: {len(a['long_functions'])}")
    for n, f in a["long_functions"]:
        print(f"  {n:5d}  {f}")
    print(f"functions handed a whole command config that read <= 3 of its fields: {len(a['narrow_config'])}")
    for n, f in a["narrow_config"]:
        print(f"  {f}")


if __name__ == "__main__":
    sys.exit(main())
