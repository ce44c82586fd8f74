"""Which base model an adapter belongs to, and refusing it on any other.

A LoRA is trained against one base's weights. On a base of another shape it cannot load; on another model of the
same shape (another seed, another fine-tune) it loads silently and answers with nonsense. So every adapter seal-tt
writes records its base beside adapter_config.json (`seal_tt_base.json`: the base's content hash as provenance
computes it, cached per file so a large model is read once, and its shapes), and loading checks it: another shape
is always refused, another content is refused unless forced. An adapter from elsewhere records nothing: only its
tensor shapes are checked, as the load reads them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from core.errors import UserError

RECORD = "seal_tt_base.json"
SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size")
CONTENT_KEYS = ("sha256", "gguf_sha256", "hub_revision")  # what core.provenance.model_identity gives


def config_shapes(config) -> dict:
    return {k: getattr(config, k) for k in SHAPE_KEYS if getattr(config, k, None) is not None}


class Base:
    """The model an adapter is saved from or applied to: its shapes, and its content hash when first needed."""

    def __init__(self, path: str, config):
        self.path = str(path)
        self.shapes = config_shapes(config)
        self._content: dict | None = None

    @property
    def content(self) -> dict:
        if self._content is None:
            from core.provenance import model_identity

            found = model_identity(self.path)
            self._content = {k: found[k] for k in CONTENT_KEYS if found.get(k)}
        return self._content

    def record(self) -> dict:
        return {"path": self.path, **self.content, "shapes": self.shapes}


def write_record(adapter_dir: str | Path, base: Base) -> None:
    from core.rundir import atomic_write_json

    atomic_write_json(Path(adapter_dir) / RECORD, base.record())


def read_record(adapter_dir: str | Path, run: str | Path | None = None) -> dict | None:
    """The base `adapter_dir` records; else, for an adapter of a run folder written before such records, the student
    that `run`'s provenance.json names (its content, no shapes); None when neither says."""
    path = Path(adapter_dir) / RECORD
    if path.is_file():
        data = _json(path)
        if not isinstance(data, dict):
            raise UserError(f"{path} is damaged (not a JSON object); remove it to load the adapter unchecked")
        return data
    prov = Path(run) / "provenance.json" if run is not None else None
    if prov is None or not prov.is_file():
        return None
    try:
        data = _json(prov)
        entry = ([e for e in data.get("resumed") or [] if e] or [data.get("created")])[-1]
        student = entry["models"]["student"]
    except (UserError, AttributeError, IndexError, KeyError, TypeError):
        return None  # provenance is a record for people; a damaged one never stops a load
    return {k: student[k] for k in ("path", *CONTENT_KEYS) if student.get(k)} or None


def check_base(adapter_dir: str | Path, base: Base, *, force: bool = False, run: str | Path | None = None) -> None:
    """Refuse `adapter_dir` on `base` when it records another base: another shape always, other content unless
    `force` (then a warning on stderr)."""
    recorded = read_record(adapter_dir, run)
    if not recorded:
        return
    was = recorded.get("path") or "an unnamed model"
    shapes = recorded.get("shapes") if isinstance(recorded.get("shapes"), dict) else {}
    differ = [f"{k} {shapes[k]} vs {base.shapes[k]}" for k in shapes
              if k in base.shapes and shapes[k] != base.shapes[k]]
    if differ:
        raise UserError(f"adapter {adapter_dir} was trained on {was}, whose shapes differ from base {base.path} "
                        f"({', '.join(differ)}): it cannot be applied")
    keys = [k for k in CONTENT_KEYS if isinstance(recorded.get(k), str) and recorded[k]]
    if not keys:
        return
    now = base.content
    key = next((k for k in keys if now.get(k)), None)
    if key is None or now[key] == recorded[key]:
        return  # the same content, or no common measure of it (a GGUF file then its conversion): shapes decide
    said = (f"adapter {adapter_dir} was trained on another model: {was} ({key} {recorded[key][:12]}), not "
            f"base {base.path} ({key} {now[key][:12]})")
    if not force:
        raise UserError(f"{said}; refused, as it would load silently and answer wrongly (ask and merge apply it "
                        "anyway with --force)")
    print(f"warning: {said}; applied anyway (--force)", file=sys.stderr)


def load_peft(model, adapter_dir: str | Path, base_name: str, **kwargs):
    """PEFT's load of `adapter_dir` onto `model`, with a base of another shape said in one line."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), **kwargs)
    except RuntimeError as err:
        found = re.search(r"size mismatch for (\S+): copying a param with shape torch.Size\((\[[^]]*\])\) from "
                          r"checkpoint, the shape in current model is torch.Size\((\[[^]]*\])\)", str(err))
        if found is None:
            raise
        name, theirs, ours = found.groups()
        name = name.replace("base_model.model.", "", 1).replace(".default.", ".")
        raise UserError(f"adapter {adapter_dir} does not fit base {base_name}: {name} is {theirs} in the adapter, "
                        f"{ours} in the model") from None


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON") from None
