"""Generate the configuration reference (docs/configuration.md) from the config classes themselves.

    python docs/gen_config_reference.py            # print the page as it should be
    python docs/gen_config_reference.py --write    # rewrite docs/configuration.md below its marker line
    python docs/gen_config_reference.py --check    # exit 1 if the committed page differs

The page is a hand-written head (everything above MARKER, kept as it is) and a generated body: per command, every
YAML key path with its type, default, allowed values and the comment written beside the field. The walk is generic:
the command config classes are found by name wherever they are exported (the `CONFIGS` registry `seal-tt config`
uses, else the class names), their fields are read with `dataclasses` and `typing` (Literal choices, `X | None`,
lists, nested settings blocks), defaults come from an instance (so `default_factory` settings are right), ranges from
any `_RANGES` table of the packages (or a field's `metadata["range"]`), descriptions from the comments in the source.

`tests/test_docs.py` imports this file to check the committed page and to check the `--set key=value` examples of
the documentation against the same key walk.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "configuration.md"
MARKER = "<!-- Generated below this line by docs/gen_config_reference.py from the config classes; do not edit by hand. -->"

# Where the command configs may live (the workflow refactor moves them beside their packages).
CANDIDATE_MODULES = (
    "core.config", "pipeline.config", "pipeline.settings", "pipeline.commands",
    "pipeline.adapt", "pipeline.adapt_settings", "pipeline.train_teacher", "pipeline.rest_em",
    "pipeline.store", "pipeline.store.settings", "pipeline.store.config",
    "pipeline.tasks.arc", "pipeline.tasks.arc.settings", "pipeline.tasks.arc.config", "teacher.config",
)
# command -> class name, used when no CONFIGS registry is found
COMMAND_CLASSES = {"adapt-student": "AdaptConfig", "train-teacher": "TrainTeacherConfig", "update": "StoreConfig"}


def _import(name: str):
    if REPO.as_posix() not in sys.path:
        sys.path.insert(0, REPO.as_posix())
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def find(name: str):
    """The first object called `name` exported by one of the candidate modules."""
    for module_name in CANDIDATE_MODULES:
        module = _import(module_name)
        if module is not None and hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"{name} is exported by none of {', '.join(CANDIDATE_MODULES)}; add its module to "
                      f"CANDIDATE_MODULES in {Path(__file__).name}")


def command_configs() -> dict[str, type]:
    """{command: its top-level config dataclass}, as `seal-tt config COMMAND` resolves them."""
    try:
        registry = find("CONFIGS")
    except LookupError:
        registry = None
    if isinstance(registry, dict) and registry:
        return dict(registry)
    return {command: find(name) for command, name in COMMAND_CLASSES.items()}


# ------------------------------------------------------------------------------------------------ the key walk
@dataclasses.dataclass
class Key:
    path: str
    type: str  # "" for a settings block
    default: object
    allowed: str
    doc: str
    block: bool = False


def _settings_classes(cls, seen: set | None = None) -> set:
    """A config dataclass and every settings dataclass nested in it."""
    seen = set() if seen is None else seen
    if cls in seen:
        return seen
    seen.add(cls)
    for tp in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            _settings_classes(tp, seen)
    return seen


def _ranges() -> dict:
    """Every `_RANGES` table ({class: {field: (check, text)}}) of the modules that define the config classes (and of
    `core.config`, the loader's home), merged; the same modules whatever else is imported, so the page is stable."""
    modules = {"core.config"}
    for top in command_configs().values():
        modules |= {c.__module__ for c in _settings_classes(top)}
    out: dict = {}
    for name in sorted(modules):
        table = getattr(_import(name), "_RANGES", None)
        if isinstance(table, dict):
            for cls, checks in table.items():
                if isinstance(checks, dict):
                    out.setdefault(cls, {}).update(checks)
    return out


def _is_optional(tp) -> tuple[bool, object]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return True, (args[0] if len(args) == 1 else typing.Union[tuple(args)])
    return False, tp


def type_text(tp) -> str:
    optional, inner = _is_optional(tp)
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        text = "choice"
    elif origin is list:
        (item,) = typing.get_args(inner)
        text = f"list[{type_text(item)}]"
    elif origin in (typing.Union, types.UnionType):
        text = " or ".join(type_text(a) for a in typing.get_args(inner))
    elif isinstance(inner, type):
        text = inner.__name__
    else:
        text = str(inner)
    return f"{text} or null" if optional else text


def _choices(tp) -> list | None:
    _, inner = _is_optional(tp)
    if typing.get_origin(inner) is typing.Literal:
        return list(typing.get_args(inner))
    return None


def value_text(value) -> str:
    """A default as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if value == "" or any(c in value for c in "\n\t\"'") or value.strip() != value:
            return json.dumps(value, ensure_ascii=False)
        return value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    return repr(value)


def field_comments(cls) -> dict[str, str]:
    """{field: the comment written beside it (the lines just above and the end of its own lines)} from the source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except tokenize.TokenError:
        return {}
    out = {}
    tree = ast.parse(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments.get(line, ""))
            line -= 1
        beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        parts = [c for c in above + beside if c and not c.startswith("noqa")]
        out[node.target.id] = " ".join(c.split("  # noqa")[0] for c in parts)
    return out


def _doc(cls) -> str:
    doc = inspect.getdoc(cls) or ""
    # dataclasses write a signature as the docstring of a class without one
    if doc.startswith(cls.__name__ + "("):
        return ""
    return " ".join(doc.split())


def walk(cls, instance=None, prefix: str = "", ranges: dict | None = None) -> list[Key]:
    """Every key of a config dataclass, depth first in field order: settings blocks, then their keys."""
    instance = cls() if instance is None else instance
    all_ranges = _ranges() if ranges is None else ranges
    hints = typing.get_type_hints(cls)
    ranges = all_ranges.get(cls, {})
    notes = field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        path, tp, value = prefix + f.name, hints[f.name], getattr(instance, f.name)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out.append(Key(path, "", None, "", " ".join(x for x in (notes.get(f.name, ""), _doc(tp)) if x),
                           block=True))
            out += walk(tp, value, path + ".", all_ranges)
            continue
        allowed = []
        choices = _choices(tp)
        if choices:
            allowed.append(", ".join(value_text(c) for c in choices))
        if f.name in ranges:
            allowed.append(str(ranges[f.name][1]))
        for meta in ("range", "allowed"):
            if meta in f.metadata:
                allowed.append(str(f.metadata[meta]))
        out.append(Key(path, type_text(tp), value, "; ".join(allowed), notes.get(f.name, "")))
    return out


def config_keys(cls) -> set[str]:
    """Every dotted key a `--set key=value` may name for this config (settings blocks included)."""
    return {k.path for k in walk(cls)}


# ------------------------------------------------------------------------------------------------- the page
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else ""


def body() -> str:
    configs = command_configs()
    out = [MARKER, ""]
    for command, cls in configs.items():
        keys = walk(cls)
        leaves = sum(not k.block for k in keys)
        out += [f"## `seal-tt {command}`", ""]
        doc = _doc(cls)
        out += [f"`{cls.__name__}` ({cls.__module__}), {leaves} keys. {doc}".rstrip(), ""]
        out += ["| key | type | default | allowed | what |", "|---|---|---|---|---|"]
        for k in keys:
            if k.block:
                out.append(f"| **`{_cell(k.path)}`** | settings | | | {_cell(k.doc)} |")
            else:
                allowed = k.allowed
                out.append(f"| `{_cell(k.path)}` | {_cell(k.type)} | {_code(value_text(k.default))} | "
                           f"{_cell(allowed)} | {_cell(k.doc)} |")
        out.append("")
    return "\n".join(out)


def head(page: Path = PAGE) -> str:
    """The hand-written part of the committed page, up to (not including) the marker line."""
    text = page.read_text(encoding="utf-8") if page.is_file() else "# Configuration reference\n\n"
    return text.split(MARKER, 1)[0]


def render(page: Path = PAGE) -> str:
    return head(page).rstrip("\n") + "\n\n" + body()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--write" in argv:
        PAGE.write_text(text, encoding="utf-8")
        print(f"wrote {PAGE.relative_to(REPO)}", file=sys.stderr)
        return 0
    if "--check" in argv:
        same = PAGE.is_file() and PAGE.read_text(encoding="utf-8") == text
        if not same:
            print(f"{PAGE.relative_to(REPO)} is stale: run python docs/gen_config_reference.py --write", file=sys.stderr)
        return 0 if same else 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
