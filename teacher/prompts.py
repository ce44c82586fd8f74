"""Self-edit prompt templates for knowledge incorporation.

The wording is our own. The paper's exact prompts are stored in the `prompt` field of its released data files; a
user who wants them can save one to a text file (with {title} and {passage} in place of the document) and pass its
path as `self_edit.prompt`.
"""

from __future__ import annotations

import string
from pathlib import Path

from core.errors import UserError

TEMPLATES: dict[str, str] = {
    "implications": (
        "Read the passage below. Then list the facts and consequences that follow from it, one per line, each a "
        "complete sentence that makes sense on its own.\n\n"
        "Title: {title}\nPassage: {passage}\n\nImplications:\n"
    ),
    "rewrite": (
        "Rewrite the passage below in your own words, several times over if it helps, keeping every fact. Put each "
        "sentence on its own line.\n\n"
        "Title: {title}\nPassage: {passage}\n\nRewritten passage:\n"
    ),
    "self_qa": (
        "Read the passage below and write question-and-answer pairs that together cover every fact in it. Write each "
        "pair as a line starting with 'Question:' followed by a line starting with 'Answer:', and leave a blank line "
        "between pairs.\n\n"
        "Title: {title}\nPassage: {passage}\n\nQuestions and answers:\n"
    ),
    # Longer variants of "implications": more lines, so more training sequences (capped by self_edit.max_sequences).
    "long_implications": (
        "Read the passage below. Then write a long, thorough list of the facts and consequences that follow from "
        "it: aim for many lines, one idea per line, each a complete sentence that makes sense on its own.\n\n"
        "Title: {title}\nPassage: {passage}\n\nImplications:\n"
    ),
    "very_long_implications": (
        "Read the passage below. Then write an exhaustive list of everything that follows from it: every stated "
        "fact, every detail, name, number and date, and every consequence you can draw, directly or indirectly. "
        "Keep going until nothing is left out. Write one idea per line, each a complete sentence that makes sense "
        "on its own.\n\n"
        "Title: {title}\nPassage: {passage}\n\nImplications:\n"
    ),
    # Chain of thought: the reasoning is written first and stripped before training (everything up to the last
    # COT_MARKER; see pipeline.tasks.knowledge), so only the list is absorbed.
    "implications_cot": (
        "Read the passage below and think it through step by step before answering. First, under 'Reasoning:', "
        "work out what the passage says and what follows from it. Then write a line that says 'Implications:' and, "
        "below it, list the facts and consequences, one per line, each a complete sentence that makes sense on its "
        "own.\n\n"
        "Title: {title}\nPassage: {passage}\n\nReasoning:\n"
    ),
    # The "no prompt" ablation: the teacher just continues the passage.
    "no_prompt": "Title: {title}\n{passage}\n",
}

FIELDS = {"title", "passage"}

# Built-in templates whose completions start with reasoning, and the line that ends it.
REASONING_TEMPLATES = frozenset({"implications_cot"})
COT_MARKER = "Implications:"


def load_template(name_or_path: str) -> str:
    """A built-in template by name, an inline template, or a template file; templates hold {passage} and
    optionally {title}."""
    if name_or_path in TEMPLATES:
        return TEMPLATES[name_or_path]
    if "{passage}" in name_or_path:  # the template itself, written inline in a config
        check_template(name_or_path, "self_edit.prompt")
        return name_or_path
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise UserError(
            f"self-edit prompt {name_or_path!r} is neither a built-in ({', '.join(TEMPLATES)}) nor a template file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"prompt template {path} is not UTF-8 text") from None
    check_template(text, str(path))
    return text


def check_template(text: str, where: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as err:
        raise UserError(f"prompt template {where}: {err} (write literal braces as {{{{ and }}}})") from None
    unknown = names - FIELDS
    if unknown:
        raise UserError(f"prompt template {where}: unknown placeholder {{{sorted(unknown)[0]}}}; use {{title}}, {{passage}}")
    if "passage" not in names:
        raise UserError(f"prompt template {where} has no {{passage}} placeholder")


def render(template: str, *, title: str, passage: str) -> str:
    return template.format(title=title, passage=passage)
