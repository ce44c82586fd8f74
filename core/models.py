"""Loading Hugging Face models and tokenizers, and encoding prompts the way each model expects.

Teacher and student go through the same functions, so any hub id, local folder or GGUF file (converted once and
cached, `core.gguf`) works for either role. Errors a user can cause (a wrong path, an id that is not cached while
offline, a GGUF architecture transformers cannot read) become one-line `UserError`s.
"""

from __future__ import annotations

import os
from pathlib import Path

from core import gguf
from core.devices import pick_device, pick_dtype
from core.errors import UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or Path(name).exists()


def adapter_base(name: str) -> str | None:
    """For a PEFT adapter folder (e.g. a trained teacher, runs/x/round_2/teacher), the base model it belongs to."""
    import json

    cfg = Path(name).expanduser() / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{cfg} is not valid JSON") from None
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    if not base:
        raise UserError(f"{cfg} does not name its base model (base_model_name_or_path)")
    return base


def check_model_reference(name: str, role: str, *, allow_adapter: bool = False) -> None:
    """Fail early, before any output is written, on a reference that cannot be a model."""
    if not name:
        raise UserError(f"no {role} model given (--{role} MODEL: a hub id, a local folder or a .gguf file)")
    p = Path(name).expanduser()
    if p.exists():
        found = gguf.gguf_file(p)
        if found is not None:
            gguf.check_gguf(found)
            return
        if not p.is_dir():
            raise UserError(f"{role} model {name!r} is a file; expected a model folder, a .gguf file or a hub id")
        if allow_adapter and (base := adapter_base(name)) is not None:
            require_safetensors(name)
            check_model_reference(base, f"{role} adapter's base")
            return
        if not (p / "config.json").exists():
            raise UserError(f"{role} model folder {name!r} has no config.json (not a saved Hugging Face model)")
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"{role} model folder not found: {name}")


def require_safetensors(adapter_dir: str | Path) -> None:
    """Adapters from users are read only as safetensors: a pickled adapter_model.bin could run code when loaded."""
    if not (Path(adapter_dir) / ADAPTER_WEIGHTS).is_file():
        extra = " (only a pickled adapter_model.bin is there; convert it to safetensors)" if (
            Path(adapter_dir) / "adapter_model.bin").exists() else ""
        raise UserError(f"no {ADAPTER_WEIGHTS} in adapter folder {adapter_dir}{extra}")


def resolve_model_path(name: str, *, dtype: str = "auto", device: str = "auto") -> str:
    """The folder transformers should load for `name`: itself, or a GGUF file's cached conversion in `dtype`."""
    from core.progress import say

    return gguf.resolve(name, dtype=dtype, device=device, say=say)


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    from core.progress import say

    name = gguf.resolve_tokenizer(name, say=say)
    if name.lower().endswith(".gguf"):  # not converted yet: read its tokenizer without the weights
        return gguf.load_gguf_tokenizer(Path(name))
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load tokenizer {name!r}: {_first_line(err)}") from None
    if tok.pad_token_id is None:
        # Pads are masked out of the loss and attention, so reusing EOS as the pad is safe.
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    name: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    from transformers import AutoModelForCausalLM

    name = resolve_model_path(name, dtype=dtype, device=device)
    device = pick_device(device)
    kwargs = {"dtype": pick_dtype(dtype, device), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model {name!r}: {_first_line(err)}") from None
    return model.to(device)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat(tokenizer, mode: str) -> bool:
    if mode == "always":
        if not has_chat_template(tokenizer):
            raise UserError("use_chat_template is 'always' but the model's tokenizer has no chat template")
        return True
    return mode == "auto" and has_chat_template(tokenizer)


def reply_until(tokenizer, use_chat_template: str = "auto", until: str = "auto") -> str:
    """How much of a reply a student with `tokenizer` is read by under these settings: "line" or "turn" (auto: turn
    through a chat template, else line). `StudentEngine.reply_until` for a tokenizer alone."""
    if until == "auto":
        return "turn" if use_chat(tokenizer, use_chat_template) else "line"
    if until not in ("line", "turn"):
        raise ValueError(f"until must be auto, line or turn, not {until!r}")
    return until


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template closes an assistant turn with (<|im_end|>, <|eot_id|>, ...), if any.

    A model's EOS and its end-of-turn token can differ (SmolLM2's GGUF tokenizer names <|im_start|> as its EOS,
    while every turn ends with <|im_end|>): generation that stops only at EOS runs on into invented turns.
    """
    if not has_chat_template(tokenizer):
        return None
    marker = "Zq7xW"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render an assistant turn has no end to find
        return None
    after = text.split(marker, 1)[1] if marker in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return next((i for i in ids if i in special), None)


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a generated completion: EOS and the chat template's end-of-turn token."""
    key = (tokenizer.eos_token_id, getattr(tokenizer, "chat_template", None))
    cached = getattr(tokenizer, "_seal_tt_stops", None)
    if cached is None or cached[0] != key:
        ids = [tokenizer.eos_token_id, end_of_turn_id(tokenizer)]
        cached = (key, sorted({i for i in ids if i is not None}))
        tokenizer._seal_tt_stops = cached  # rendering the template once per tokenizer, not per generate call
    return list(cached[1])


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids of a prompt that the model continues: a user turn plus the generation prompt, or raw text."""
    if chat:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        # The template already holds any BOS; adding special tokens again would double it.
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
