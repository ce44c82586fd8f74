"""The documentation stays true: the configuration reference is the generated one, every documented `seal-tt` command
line parses against the real CLI, and every relative link points to a file.

- `docs/configuration.md` must equal what `docs/gen_config_reference.py` generates from the config classes
  (regenerate with `python docs/gen_config_reference.py --write`).
- Every `seal-tt ...` line in README.md and docs/*.md code blocks (and in inline code spans that start with
  `seal-tt `) is checked without running it: the command exists, each flag exists for it and gets its value, click
  parses the whole line (types, required options) unless it elides arguments with `...`, every `--set key=value`
  names a config key of that command and its value passes the config loader and its range checks, and a `--config`
  file of this repository loads. Shell variables (`$M`, `$(...)`) are opaque values; files named by arguments need not
  exist (only `configs/...` files must). `make` lines and other programs are not checked.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
GENERATOR = DOCS / "gen_config_reference.py"
ELLIPSIS = {"...", "…"}
OPAQUE = "$VAR"  # what a command substitution $(...) is replaced by


def _generator():
    """docs/gen_config_reference.py as a module (it is a script, not part of a package)."""
    import sys

    if "gen_config_reference" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gen_config_reference", GENERATOR)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclass needs its module registered
        spec.loader.exec_module(module)
    return sys.modules["gen_config_reference"]


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


# ------------------------------------------------------------------------------------------------- extraction
@dataclass
class Documented:
    where: str  # file:line
    line: str  # the logical line as written
    argv: list[str]  # after `seal-tt`
    partial: bool = False  # an inline mention: required arguments may be left out


_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


def _code(text: str) -> tuple[list[tuple[int, str, list[str]]], str]:
    """(fenced blocks as (first line number, language, lines), the text outside them)."""
    blocks, outside, current = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if current is None and m:
            current = (number + 1, m.group(3).lower(), [], m.group(2))
            outside.append("")
        elif current is not None and line.strip().startswith(current[3]):
            blocks.append(current[:3])
            current = None
            outside.append("")
        elif current is not None:
            current[2].append(line)
            outside.append("")
        else:
            outside.append(line)
    return blocks, "\n".join(outside)


def _logical_lines(lines: list[str], first: int) -> list[tuple[int, str]]:
    """Lines joined over trailing backslashes, each with its first line number; a shell prompt `$ ` dropped."""
    out, buffer, start = [], "", None
    for offset, line in enumerate(lines):
        if start is None:
            start = first + offset
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        out.append((start, buffer + line))
        buffer, start = "", None
    if buffer:
        out.append((start, buffer))
    return [(n, re.sub(r"^\s*\$ ", "", s)) for n, s in out]


def _substitutions(line: str) -> tuple[str, list[str]]:
    """`$(...)` (innermost first) replaced by an opaque value; the commands inside returned to be checked too."""
    inner = []
    pattern = re.compile(r"\$\(([^()]*)\)")
    while (m := pattern.search(line)) is not None:
        inner.append(m.group(1))
        line = line[:m.start()] + OPAQUE + line[m.end():]
    return line, inner


def _segments(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at && || ; | &), comments and redirections dropped."""
    line = re.sub(r"(?<=\s)\d+(?=>)", "", line)  # `2>&1` -> `>&1`
    lexer = shlex.shlex(line, posix=True, punctuation_chars="();<>|&")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: not a shell line (prose in a text block)
        return []
    segments, current, skip = [], [], False
    for tok in tokens:
        if skip:
            skip = False
            continue
        if tok in ("&&", "||", ";", "|", "&", "(", ")"):
            segments.append(current)
            current = []
        elif tok and set(tok) <= set("<>&") and ("<" in tok or ">" in tok):
            skip = True  # a redirection: drop it and its target (a file, or the descriptor of >&1)
        else:
            current.append(tok)
    segments.append(current)
    return [s for s in segments if s]


def _seal_tt_argv(tokens: list[str]) -> list[str] | None:
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):  # VAR=value before the command
        tokens = tokens[1:]
    if tokens and Path(tokens[0]).name == "seal-tt":
        return tokens[1:]
    return None


def _commands_in_line(line: str) -> list[list[str]]:
    line, inner = _substitutions(line)
    found = []
    for text in [line, *inner]:
        for tokens in _segments(text):
            argv = _seal_tt_argv(tokens)
            if argv is not None:
                found.append(argv)
    return found


def documented_commands(text: str, name: str) -> list[Documented]:
    """Every `seal-tt` command line of a Markdown page: in code blocks (not Python, JSON or YAML ones) and in inline
    code spans that start with `seal-tt `."""
    out = []
    blocks, outside = _code(text)
    for first, language, lines in blocks:
        if language in ("python", "py", "json", "yaml", "yml", "toml", "make", "makefile"):
            continue
        for number, line in _logical_lines(lines, first):
            for argv in _commands_in_line(line):
                out.append(Documented(f"{name}:{number}", " ".join(line.split()), argv))
    for m in re.finditer(r"(?<!`)`(seal-tt [^`]+)`(?!`)", outside):
        number = outside.count("\n", 0, m.start()) + 1
        span = " ".join(m.group(1).split())
        for argv in _commands_in_line(span):
            out.append(Documented(f"{name}:{number}", span, argv, partial=True))
    return out


# ----------------------------------------------------------------------------------------------------- checking
@dataclass
class CLI:
    group: object
    configs: dict
    keys: dict = field(default_factory=dict)  # class -> set of keys

    def keys_of(self, cls) -> set[str]:
        if cls not in self.keys:
            self.keys[cls] = _generator().config_keys(cls)
        return self.keys[cls]


def _cli() -> CLI:
    import typer.main

    from pipeline.cli import app

    return CLI(typer.main.get_command(app), _generator().command_configs())


def _click():
    """The click the CLI is built on (typer >= 0.2x vendors its own as typer._click)."""
    try:
        import typer._click as click
    except ImportError:
        import click
    return click


def _config_class(cli: CLI, command: str, argv: list[str], positionals: list[str]):
    """The config class a command's --set and --config are read into (None: the command takes none)."""
    if command == "demo":
        return cli.configs.get("update" if "--continual" in argv else "train-teacher")
    if command == "config":
        return cli.configs.get(positionals[0]) if positionals else None
    return cli.configs.get(command)


def _opaque(value: str) -> bool:
    return "$" in value or any(e in value for e in ELLIPSIS)


def _check_set(cli: CLI, cls, item: str) -> str | None:
    from core.config import load_config

    if "=" not in item:
        return f"--set {item!r} is not key=value"
    key, value = item.split("=", 1)
    keys = cli.keys_of(cls)
    if key.strip() not in keys:
        import difflib

        close = difflib.get_close_matches(key.strip(), sorted(keys), n=1)
        return f"--set {key!r} is no config key of {cls.__name__}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if _opaque(value):
        return None
    try:
        config = load_config(cls, None, [item])
        try:
            from core.config import check_ranges
        except ImportError:
            check_ranges = None
        if check_ranges is not None:
            check_ranges(config)
    except Exception as err:  # UserError, or a __post_init__ check
        return f"--set {item!r}: {err}"
    return None


def _check_config_file(cls, value: str) -> str | None:
    from core.config import load_config

    if _opaque(value):
        return None
    path = REPO / value
    if not path.is_file():
        return f"--config {value}: no such file in this repository" if value.startswith("configs/") else None
    try:
        load_config(cls, path)
    except Exception as err:
        return f"--config {value}: {err}"
    return None


def check_command(cli: CLI, argv: list[str], partial: bool = False) -> list[str]:
    """What is wrong with `seal-tt ARGV` as a command line (empty: it parses). `partial`: a mention in prose that
    may leave out required arguments (its flags and keys are still checked)."""
    click = _click()

    if not argv:
        return ["no command after seal-tt"]
    if argv[0] in ("--help", "-h"):
        return []
    command = cli.group.commands.get(argv[0])
    if command is None:
        return [f"no command {argv[0]!r} (commands: {', '.join(sorted(cli.group.commands))})"]
    options = {opt: p for p in command.params if p.param_type_name == "option" for opt in (*p.opts, *p.secondary_opts)}
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    try:
        from pipeline.cli import MULTI_VALUE_FLAGS
    except ImportError:
        MULTI_VALUE_FLAGS = set()
    problems, positionals, sets, configs = [], [], [], []
    rest, elided = argv[1:], partial
    i = 0
    while i < len(rest):
        tok = rest[i]
        i += 1
        if tok in ELLIPSIS:
            elided = True
            continue
        if tok.startswith("-") and tok != "-" and not tok.lstrip("-").replace(".", "").isdigit():
            name, eq, inline = tok.partition("=")
            if name in ("--help", "-h"):
                continue
            param = options.get(name)
            if param is None:
                import difflib

                close = difflib.get_close_matches(name, sorted(options), n=1)
                problems.append(f"{argv[0]}: no option {name}" + (f" (did you mean {close[0]}?)" if close else ""))
                if not eq and i < len(rest) and not rest[i].startswith("-"):
                    i += 1  # its value, most likely
                continue
            if param.is_flag:
                if eq:
                    problems.append(f"{argv[0]}: {name} is a flag and takes no value")
                continue
            values = [inline] if eq else []
            if not eq:
                if i >= len(rest) or (rest[i].startswith("-") and rest[i] not in ELLIPSIS and len(rest[i]) > 1
                                      and not rest[i].lstrip("-")[:1].isdigit()):
                    if not (partial and i >= len(rest)):  # "`seal-tt demo --set`" names the flag in prose
                        problems.append(f"{argv[0]}: {name} needs a value")
                    continue
                values.append(rest[i])
                i += 1
                if name in MULTI_VALUE_FLAGS:
                    while i < len(rest) and not rest[i].startswith("-") and rest[i] not in ELLIPSIS:
                        values.append(rest[i])
                        i += 1
            if param.name == "set_" or name == "--set":
                sets += values
            elif name in ("--config", "-c"):
                configs += values
            continue
        positionals.append(tok)
    if arguments and not any(a.nargs == -1 for a in arguments) and len(positionals) > sum(a.nargs for a in arguments):
        problems.append(f"{argv[0]}: {len(positionals)} arguments given, it takes at most "
                        f"{sum(a.nargs for a in arguments)} ({', '.join(a.name.upper() for a in arguments)})")
    elif not arguments and positionals:
        problems.append(f"{argv[0]}: takes no arguments, got {' '.join(positionals)}")
    if not elided and not problems:
        try:
            from pipeline.cli import _expand_multi_value
        except ImportError:
            def _expand_multi_value(a):
                return a
        try:
            command.make_context(f"seal-tt {argv[0]}", _expand_multi_value(list(argv[1:])))
        except click.ClickException as err:
            problems.append(f"{argv[0]}: click refuses it: {err.format_message()}")
    cls = _config_class(cli, argv[0], argv, positionals)
    if (sets or configs) and cls is None:
        if argv[0] == "config" and positionals and positionals[0] not in cli.configs:
            problems.append(f"config: no command {positionals[0]!r} has a config")
        elif argv[0] != "config":
            problems.append(f"{argv[0]}: takes no --set or --config")
    if cls is not None:
        problems += [p for item in sets if (p := _check_set(cli, cls, item))]
        problems += [p for value in configs if (p := _check_config_file(cls, value))]
    return problems


# -------------------------------------------------------------------------------------------------------- tests
def test_configuration_reference_is_generated():
    gen = _generator()
    committed = gen.PAGE.read_text(encoding="utf-8") if gen.PAGE.is_file() else ""
    assert gen.MARKER in committed, f"{gen.PAGE} has lost its marker line; run python docs/gen_config_reference.py --write"
    if committed != gen.render():
        import difflib

        diff = "".join(difflib.unified_diff(committed.splitlines(True), gen.render().splitlines(True),
                                            "docs/configuration.md", "generated", n=1))
        pytest.fail("docs/configuration.md is not what the config classes generate; regenerate it with\n"
                    "    python docs/gen_config_reference.py --write\n" + diff[:6000])


def test_the_reference_walks_every_command_and_knows_ranges():
    gen = _generator()
    configs = gen.command_configs()
    assert {"adapt-student", "train-teacher", "update"} <= set(configs)
    keys = {k.path: k for k in gen.walk(configs["adapt-student"])}
    assert keys["student.lora.r"].allowed and keys["student.lora.r"].default == 32
    assert "contains" in keys["student.eval.metric"].allowed
    teacher = {k.path: k for k in gen.walk(configs["train-teacher"])}
    assert teacher["m_step.lora.r"].default == 64  # a default_factory's value, not the class default


def test_every_documented_command_parses():
    cli = _cli()
    found, problems = [], []
    for page in _pages():
        for doc in documented_commands(page.read_text(encoding="utf-8"), page.relative_to(REPO).as_posix()):
            found.append(doc)
            problems += [f"{doc.where}: {p}\n    {doc.line}" for p in check_command(cli, doc.argv, doc.partial)]
    assert len(found) >= 20, f"only {len(found)} seal-tt command lines found in the docs: is the extraction broken?"
    commands = {d.argv[0] for d in found if d.argv}
    assert {"adapt-student", "train-teacher", "update", "ask", "serve", "export", "export-gguf"} <= commands
    assert not problems, "documented commands that do not parse:\n" + "\n".join(problems)


BROKEN = """
Some text with `seal-tt adapt-student --docs a.txt --tacher T` inline.

```bash
seal-tt adapt-student --docs notes/ more/ --teacher T --student S \\
    --set student.lora.rank=4          # a made-up key
seal-tt train-teacher --config configs/knowledge_squad.yaml --set student.lora.r=-3
seal-tt update --store kb/ --set strategy=forgetful --set gate.max_drop=0.1
M=$(seal-tt fetch-modle smollm2-135m)
seal-tt ask --store kb/ "one" "two"
seal-tt status
seal-tt config adapt-student --set student.train.epochs=0
seal-tt demo --set rounds=3 --set m_step.lora.r=8
make demo    # not seal-tt: ignored
```
"""


def test_the_check_catches_misspelt_flags_and_keys():
    cli = _cli()
    docs = documented_commands(BROKEN, "broken.md")
    assert [d.argv[0] for d in docs] == ["adapt-student", "train-teacher", "update", "fetch-modle", "ask", "status",
                                        "config", "demo", "adapt-student"]
    found = {d.argv[0] + ":" + d.where: check_command(cli, d.argv, d.partial) for d in docs}
    text = "\n".join(f"{k}: {v}" for k, v in found.items())
    assert "no option --tacher (did you mean --teacher?)" in text
    assert "'student.lora.rank' is no config key of AdaptConfig (did you mean 'student.lora.r'?)" in text
    assert "student.lora.r=-3" in text and "out of range" in text
    assert "'forgetful' is not one of" in text
    assert "no command 'fetch-modle'" in text
    assert "ask: 2 arguments given" in text
    assert "status: click refuses it" in text  # --store is required
    assert "student.train.epochs=0" in text
    assert not found["demo:broken.md:13"]  # a right line stays clean
    assert len([v for v in found.values() if v]) == 8


def test_extraction_reads_continuations_substitutions_and_redirections():
    text = "```bash\nM=$(seal-tt fetch-model smollm2-135m)\n0 * * * *  cd /srv && seal-tt update --store kb/ \\\n" \
           "    --docs notes/ -c store.yaml --quiet >> update.log 2>&1\n$ seal-tt status --store kb/\n```\n"
    argvs = [d.argv for d in documented_commands(text, "t.md")]
    assert argvs == [["fetch-model", "smollm2-135m"],
                     ["update", "--store", "kb/", "--docs", "notes/", "-c", "store.yaml", "--quiet"],
                     ["status", "--store", "kb/"]]


def test_inline_set_examples_name_real_keys():
    """`--set key=value` written alone in prose names a key of some command (its value may be a deliberate mistake)."""
    cli = _cli()
    keys = set().union(*(cli.keys_of(cls) for cls in cli.configs.values()))
    unknown = []
    for page in _pages():
        _, outside = _code(page.read_text(encoding="utf-8"))
        for m in re.finditer(r"`--set ([\w.]+)=[^`]*`", outside):
            if m.group(1) not in keys and m.group(1) not in ("key", "key.sub"):  # the syntax itself
                unknown.append(f"{page.relative_to(REPO)}: {m.group(0)}")
    assert not unknown, "--set examples naming no config key:\n" + "\n".join(unknown)


def _anchors(page: Path) -> set[str]:
    """The heading anchors GitHub gives a Markdown page (lowercase, punctuation dropped, spaces to hyphens)."""
    _, outside = _code(page.read_text(encoding="utf-8"))
    out, seen = set(), {}
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", outside, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_relative_links_point_to_files():
    """Every relative link (and image) of README.md and docs/*.md names a file that exists, and an anchor into a
    Markdown page names one of its headings."""
    broken = []
    for page in _pages():
        _, outside = _code(page.read_text(encoding="utf-8"))
        for m in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", outside):
            target = m.group(1)
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.relative_to(REPO)}: {target} (no heading with that anchor)")
    assert not broken, "links to missing files or headings:\n" + "\n".join(broken)


def test_docs_index_lists_every_page():
    index = DOCS / "README.md"
    assert index.is_file(), "docs/README.md (the index) is missing"
    text = index.read_text(encoding="utf-8")
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md" and f"]({p.name})" not in text]
    assert not missing, f"docs/README.md does not link {missing}"
    assert "](docs/README.md)" in (REPO / "README.md").read_text(encoding="utf-8")
