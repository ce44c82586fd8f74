"""Typed configuration: dataclasses with visible defaults, loaded from YAML, overridable field by field.

One dataclass per command. `load_config(cls, path, overrides)` merges, in order: the dataclass defaults, the YAML
file, then `key.sub=value` overrides from the command line. Unknown keys and wrong types are user errors with a
suggestion, never silently ignored: a typo in `lora.rank` must not train with the default rank.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import UserError


# --------------------------------------------------------------------------------------------- settings blocks
@dataclass
class LoraSettings:
    r: int = 32
    alpha: int = 64
    dropout: float = 0.0
    # Explicit on purpose: the paper's code relied on PEFT's per-architecture defaults, which differ by family.
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class TrainSettings:
    """One LoRA absorption (the inner loop)."""

    learning_rate: float = 1e-3
    epochs: int = 10
    batch_size: int = 1
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_length: int = 2048
    gradient_checkpointing: bool = False


@dataclass
class ModelSettings:
    """How a model is loaded. `path` is a hub id or a local folder."""

    path: str = ""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None


@dataclass
class EvalSettings:
    """How the student answers questions: greedy, batched, first line of the completion."""

    max_new_tokens: int = 64
    batch_size: int = 16
    qa_prompt: str = "Answer the question with a short answer.\nQuestion: {question}\nAnswer:"
    use_chat_template: Literal["auto", "always", "never"] = "auto"
    metric: Literal["exact_match", "token_f1", "contains", "llm_judge"] = "token_f1"
    judge_model: str | None = None


@dataclass
class GenerationSettings:
    num_samples: int = 5
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    batch_size: int = 8
    use_chat_template: Literal["auto", "always", "never"] = "auto"


@dataclass
class SelfEditSettings:
    """How a knowledge self-edit becomes training sequences (the paper's switches)."""

    # implications | rewrite | self_qa | no_prompt, or a path to a text file with {title} and {passage}
    prompt: str = "implications"
    split: Literal["lines", "blocks", "whole"] = "lines"
    prefix_title: bool = True
    include_passage: bool = True
    min_chars: int = 8


@dataclass
class TeacherSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    backend: Literal["transformers", "vllm"] = "transformers"
    generation: GenerationSettings = field(default_factory=GenerationSettings)


@dataclass
class StudentSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)


@dataclass
class ArcSettings:
    """Few-shot ARC inputs (task: arc)."""

    challenges: str | None = None
    solutions: str | None = None


# ------------------------------------------------------------------------------------------------ commands
@dataclass
class AdaptConfig:
    """`seal-tt adapt-student`: the teacher writes self-edits for documents, the student absorbs them."""

    task: Literal["knowledge", "arc"] = "knowledge"
    docs: list[str] = field(default_factory=list)
    questions: str | None = None
    limit: int | None = None
    output: str = "runs/adapt"
    # joint: every document into one adapter (continued pretraining); per_document: one adapter each
    mode: Literal["joint", "per_document"] = "joint"
    seed: int = 0
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    student: StudentSettings = field(default_factory=StudentSettings)
    self_edit: SelfEditSettings = field(default_factory=SelfEditSettings)
    arc: ArcSettings = field(default_factory=ArcSettings)


# ------------------------------------------------------------------------------------------------- loading
def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is lossless (int -> float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if errors else f"config key '{key}': invalid value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"config key '{key}': {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):  # `--set student.lora.target_modules=q_proj,v_proj`
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{key}': expected a string, got {value!r}")
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    known = _fields(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise UserError(f"unknown config key '{prefix}{name}'{hint}")
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    return cls(**kwargs)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> dict:
    """`student.lora.r=16` -> {"student": {"lora": {"r": 16}}}; the value is read as YAML (16, 1e-3, true, [a, b])."""
    if "=" not in item:
        raise UserError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-3 as a string (no dot before the e); users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") and value.strip() else value
        except ValueError:
            pass
    nested: dict = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"{p}: invalid YAML{where}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: the top level must be a mapping of config keys")
    return data


def load_config(cls, path: str | Path | None = None, overrides: list[str] | dict | None = None):
    """Defaults <- YAML file <- overrides (strings `a.b=c` or a nested dict, e.g. from CLI flags)."""
    data: dict = {}
    if path is not None:
        data = read_yaml(path)
    if isinstance(overrides, dict):
        data = _deep_merge(data, overrides)
    else:
        for item in overrides or []:
            data = _deep_merge(data, parse_override(item))
    return _build(cls, data)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def dump_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


CONFIGS: dict[str, type] = {"adapt-student": AdaptConfig}
