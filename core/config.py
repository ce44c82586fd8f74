"""Typed configuration: dataclasses with visible defaults, loaded from YAML, overridable field by field.

The settings blocks both roles share live here (model, LoRA, training, generation, evaluation, executor, the M-step);
each command's config lives beside its workflow (`pipeline.settings`, `pipeline.store.config`; the registry is
`pipeline.commands.CONFIGS`). `load_config(cls, path, overrides)` merges, in order: the dataclass defaults, the YAML
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

import json
import re
import sys

import yaml

from core.errors import UserError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; everyone writing a learning rate means a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


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
    # A long absorption (adapt-student, one adapter) saves its LoRA and optimizer state this often, so a kill
    # resumes from the last save to the same result; checkpoint_steps (optional) also saves every N steps.
    checkpoint_minutes: float = 10.0
    checkpoint_steps: int | None = None
    # What an absorption minimises. nll: next-token loss on the training texts. context_distill (small students,
    # single process only): forward KL(p_with_passage || p_adapted) over the vocabulary on each text's tokens,
    # p_with_passage the student with the adapter off and the passage in the prompt, p_adapted the student with the
    # adapter on and no passage (StudentEngine.train_distill); loss = distill_weight * KL + (1 - distill_weight) * NLL.
    objective: Literal["nll", "context_distill"] = "nll"
    distill_weight: float = 1.0


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
    """How the student answers questions: greedy, batched, a line or a whole turn of the completion."""

    max_new_tokens: int = 64
    batch_size: int = 16
    qa_prompt: str = "Answer the question with a short answer.\nQuestion: {question}\nAnswer:"
    use_chat_template: Literal["auto", "always", "never"] = "auto"
    # answer_rank / answer_margin: the student's log-probability of the gold answer against the document's other
    # answers (knowledge.dense_scores). auto: contains_numeric for a student read by whole turns (answer_until),
    # else token_f1: it agreed best with 200 labelled chat replies (kappa 0.710; benchmarks/grader_check/).
    metric: Literal["auto", "exact_match", "token_f1", "contains", "contains_numeric", "llm_judge", "answer_rank",
                    "answer_margin"] = "auto"
    judge_model: str | None = None
    # How much of a reply is the answer. line: up to the first newline (students trained on one-line answers, such
    # as the synthetic world's); turn: the whole assistant turn under max_new_tokens, for chat models, whose replies
    # may open with a preamble ("The answer to this question is:") and answer on the next line. auto: turn when
    # the student answers through a chat template, else line.
    answer_until: Literal["auto", "line", "turn"] = "auto"
    # Also answer each question with the passage in the prompt, the adapter off: the open-book ceiling, and the
    # share of it the closed-book answers reach (report.json's "ceiling").
    open_book: bool = False
    open_book_prompt: str = ("Answer the question with a short answer, using the passage.\nPassage: {passage}\n"
                             "Question: {question}\nAnswer:")


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

    # implications | long_implications | very_long_implications | implications_cot | rewrite | self_qa | no_prompt,
    # an inline template, or a path to a text file with {title} and {passage}
    prompt: str = "implications"
    # lines: one sequence per line; blocks: per blank-line-separated block; qa: per question-answer pair (a block
    # that opens with "Answer" joins the question before it, whichever way the pairs are spaced); whole: one.
    split: Literal["lines", "blocks", "qa", "whole"] = "lines"
    prefix_title: bool = True
    include_passage: bool = True
    min_chars: int = 8
    # Drop a chain-of-thought completion's reasoning: everything up to the last "Implications:" (any case). auto:
    # only for the built-in implications_cot prompt (a user template cannot be told apart reliably: the plain
    # implications prompts end with that very marker); always: any prompt, e.g. the paper's CoT prompt from a file.
    # A completion without the marker is kept whole and counted in the records.
    strip_reasoning: Literal["auto", "always", "never"] = "auto"
    # At most this many training sequences per completion, the first ones kept (the paper's cap); 0: no cap.
    max_sequences: int = 30

    def __post_init__(self):
        # Checked when the block is built (load_config, or by hand), so a bad value fails before any model loads.
        check_ranges(self, "self_edit.")


@dataclass
class EditsSettings:
    """Pre-written self-edits to absorb instead of a teacher's (adapt-student --edits FILE): a JSONL of
    {"document", "completion"} lines, or the paper's JSON with "completions"."""

    file: str | None = None
    # Per document, `count` completions from index `start` (the first one, as the paper's evaluation); null: all.
    start: int = 0
    count: int | None = 1


@dataclass
class PassageSettings:
    """How documents longer than a passage are split (token-aware, on paragraph / sentence boundaries)."""

    # Tokens per passage; null: the most that fits the student's train.max_length, its context, and the teacher's
    # context less the prompt and its generation budget.
    max_tokens: int | None = None
    overlap_tokens: int = 32
    # A guard against a run of days: more passages than this in one adapt-student run is an error before any model
    # loads (each passage costs k teacher samples and their training steps); raise it to go ahead.
    max_passages: int = 2000


@dataclass
class TeacherSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    backend: Literal["transformers", "vllm"] = "transformers"
    generation: GenerationSettings = field(default_factory=GenerationSettings)


@dataclass
class DistributedSettings:
    """Sharded training in child processes started by seal-tt (one node). `deepspeed` is a JSON path or one of
    zero2 | zero3 | zero3_offload (configs/deepspeed/); null trains in this process. Sharded, `train.batch_size`
    is per process: the global batch is batch_size x nproc."""

    deepspeed: str | None = None
    nproc: int = 1
    launcher: Literal["torchrun", "deepspeed", "accelerate", "python"] = "torchrun"


@dataclass
class ExecutorSettings:
    """Where the E-step's and held-out evaluation's inner loops run (pipeline/executor.py).

    `local`: in this process, one after another (the default). `ray`: one worker per device, each holding one
    resident student, on a Ray cluster started here or joined at `address`."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None  # None: start a local cluster; "auto" or "host:port": join a running one
    workers: int | None = None  # None: one per GPU of the cluster, or on CPUs as many as the CPUs allow
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    threads_per_worker: int | None = None  # torch threads in a worker; None: this process's count
    in_flight: int = 2  # items queued per worker, so a worker never waits for the driver
    max_tries: int = 3  # an item that fails this often is recorded as failed; the round goes on
    max_restarts: int = 3  # per worker: a worker process that dies is restarted this often
    # A restarted worker silent this long counts as dead again (raise it for students slower to load)
    ping_timeout_s: float = 60.0
    num_cpus: int | None = None  # for a cluster started here: CPUs it may use (None: all)
    object_store_mb: int = 256  # for a cluster started here


@dataclass
class StudentSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    distributed: DistributedSettings = field(default_factory=DistributedSettings)


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
        if isinstance(value, (dict, list)):  # JSON typed on the command line, e.g. a fallback recipe
            return json.dumps(value)
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
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = _yaml_load(p.read_text(encoding="utf-8"))
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


# Bounds of the numeric settings a user may get wrong: (check, how to say it). Checked by `check_ranges` before any
# model loads, so `--set student.lora.r=-3` is named as such, not reported later as something else.
_RANGES = {
    LoraSettings: {"r": (lambda v: v >= 1, ">= 1"), "alpha": (lambda v: v > 0, "> 0"),
                   "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
                   "target_modules": (lambda v: len(v) >= 1, "a non-empty list")},
    TrainSettings: {"learning_rate": (lambda v: v > 0, "> 0"), "epochs": (lambda v: v >= 1, ">= 1"),
                    "batch_size": (lambda v: v >= 1, ">= 1"), "warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
                    "weight_decay": (lambda v: v >= 0, ">= 0"), "max_length": (lambda v: v >= 16, ">= 16"),
                    "max_grad_norm": (lambda v: v is None or v > 0, "> 0 or null"),
                    "checkpoint_minutes": (lambda v: v > 0, "> 0"),
                    "checkpoint_steps": (lambda v: v is None or v >= 1, ">= 1 or null"),
                    "distill_weight": (lambda v: 0 <= v <= 1, "in [0, 1]")},
    GenerationSettings: {"num_samples": (lambda v: v >= 1, ">= 1")},
    SelfEditSettings: {"max_sequences": (lambda v: v >= 0, ">= 0 (0: no cap)")},
    DistributedSettings: {"nproc": (lambda v: v >= 1, ">= 1")},
    ExecutorSettings: {"workers": (lambda v: v is None or v >= 1, ">= 1 or null"),
                       "cpus_per_worker": (lambda v: v > 0, "> 0"),
                       "gpus_per_worker": (lambda v: v is None or v >= 0, ">= 0 or null"),
                       "threads_per_worker": (lambda v: v is None or v >= 1, ">= 1 or null"),
                       "in_flight": (lambda v: v >= 1, ">= 1"), "max_tries": (lambda v: v >= 1, ">= 1"),
                       "max_restarts": (lambda v: v >= 0, ">= 0"),
                       "ping_timeout_s": (lambda v: v > 0, "> 0")},
}


def _ranges_of(cls) -> dict:
    """A settings class's bounds: the `_RANGES` table of the module that defines it (this one for the shared blocks,
    a command's own module for its blocks)."""
    table = getattr(sys.modules.get(cls.__module__), "_RANGES", None)
    return table.get(cls, {}) if isinstance(table, dict) else {}


def check_ranges(config, prefix: str = "") -> None:
    """Every setting inside `config` within its bounds; else a UserError naming the key."""
    checks = _ranges_of(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if f.name in checks and not checks[f.name][0](value):
            raise UserError(f"config key '{key}': {value!r} is out of range (must be {checks[f.name][1]})")
        if dataclasses.is_dataclass(value):
            check_ranges(value, key + ".")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def dump_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class MStepSettings:
    """SFT of the teacher on (prompt, selected self-edit) pairs with TRL, LoRA on the teacher."""

    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=64, alpha=128, target_modules=list(ALL_PROJECTIONS)))
    learning_rate: float = 3e-4
    epochs: int = 2
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: float = 0.0
    max_length: int = 2048
    gradient_checkpointing: bool = False
    # A DeepSpeed JSON path or zero2 | zero3 | zero3_offload: the M-step then runs sharded over `nproc` processes
    # started with `launcher`, for teachers that do not fit one device. Sharded, batch_size is per process
    # (global batch = batch_size x gradient_accumulation_steps x nproc).
    deepspeed: str | None = None
    nproc: int = 1
    launcher: Literal["torchrun", "deepspeed", "accelerate", "python"] = "torchrun"


# The M-step trains like an absorption: its training settings have the same bounds as `student.train`'s.
_RANGES[MStepSettings] = {
    **{name: _RANGES[TrainSettings][name] for name in ("learning_rate", "epochs", "batch_size", "warmup_ratio",
                                                       "max_length")},
    "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"), "nproc": (lambda v: v >= 1, ">= 1"),
}
