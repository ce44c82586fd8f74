"""Records stamped with what made them: the content hash of their input and the identity of their model.

Every record a resume may reuse (adapt-student's self-edits, ARC's recipes, ReST-EM's samples and its E-step and
held-out scores) carries `"stamp": {"input": <sha256 of its input: the document or passage text and the prompt the
teacher saw>, "model": <the identity of the model that wrote it>}`. A model's identity is its content hash as
`core.provenance` records it (remembered per file by `core.hashing`, so a large model is not read again on every
resume); given self-edits name their file's hash instead (`edits:<sha256>`).

A resume compares each reused record's stamp with the one the current inputs and model would give (`check`), and
redoes the records that differ. A record written before stamps existed is checked once: its input against the
current one (the caller's `legacy` test, e.g. the prompt it records), its model against the model the run recorded
in provenance.json (`recorded_model_agrees`); if both agree it is stamped and kept, else redone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from core.rundir import atomic_write_text

KEY = "stamp"


def input_hash(input_text: str, prompt: str = "") -> str:
    return hashlib.sha256(json.dumps([input_text, prompt], ensure_ascii=False).encode()).hexdigest()


def stamp(input_text: str, prompt: str, model_id: str) -> dict:
    """The stamp of a record written by `model_id` for `input_text` shown as `prompt`."""
    return {"input": input_hash(input_text, prompt), "model": model_id}


def identity_key(identity: dict) -> str:
    """A model identity (`core.provenance.model_identity`) as one string: its content hash, else its path."""
    for field in ("gguf_sha256", "sha256", "hub_revision"):
        if identity.get(field):
            return f"{field}:{identity[field]}"
    return f"path:{identity.get('path')}"


WEIGHTS = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def _unreadable(path: str | Path) -> bool:
    """A local model folder without its weights: it cannot be identified (nor loaded)."""
    p = Path(str(path)).expanduser()
    return p.is_dir() and not any(f.suffix in WEIGHTS for f in p.rglob("*") if f.is_file())


def model_id(path: str | Path | None, adapter: str | Path | None = None) -> str | None:
    """The identity of the model at `path` (and of a LoRA `adapter` on it): its cached content hash. None where it
    cannot be told (a local folder whose weights are gone): records are then checked by their input alone, as a
    resume that needs no teacher does not need its weights either."""
    from core.provenance import model_identity

    if _unreadable(path or "") or (adapter is not None and _unreadable(adapter)):
        return None
    out = identity_key(model_identity(str(path or "")))
    if adapter is not None:
        out += "+" + adapter_id(adapter)
    return out


def adapter_id(folder: str | Path) -> str:
    """A LoRA adapter folder's identity: its weights' hashes (cached per file) and its config, the target modules
    sorted (PEFT writes them in set order, which varies between identical runs)."""
    from core.hashing import file_sha256

    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in WEIGHTS:
            h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    config = folder / "adapter_config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        if isinstance(data.get("target_modules"), list):
            data["target_modules"] = sorted(data["target_modules"])
        h.update(json.dumps(data, sort_keys=True).encode())
    return f"adapter:{h.hexdigest()}"


def edits_id(path: str | Path) -> str:
    """Given self-edits stand for a model: their file's hash."""
    from core.hashing import file_sha256

    return f"edits:{file_sha256(Path(path).expanduser())}"


def recorded_model_agrees(run_path: str | Path, role: str, current: str | None) -> bool:
    """Whether every earlier start of the run in `run_path` recorded `current` as its `role` model (provenance.json;
    the latest entry, this start's, is left out). A folder with no provenance recorded, or a model that cannot be
    identified now (None), cannot tell, and agrees."""
    path = Path(run_path) / "provenance.json"
    if current is None or not path.is_file():
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    entries = [e for e in [data.get("created"), *(data.get("resumed") or [])] if e]
    earlier = entries[:-1] if len(entries) > 1 else entries
    models = [(e.get("models") or {}).get(role) for e in earlier]
    return bool(models) and all(m is not None and identity_key(m) == current for m in models)


def matches(found: dict | None, want: dict) -> bool:
    """Whether a record's stamp is the one wanted; against a model that cannot be identified now (`want["model"]`
    None), by the input alone."""
    if found is None:
        return False
    if want.get("model") is None:
        return found.get("input") == want["input"]
    return found == want


def check(groups: dict, expected: dict, *, legacy=None) -> tuple[dict, list, int]:
    """Split reused record groups by their stamps: returns (kept, redo, stamped).

    `groups`: key -> the records of one unit of work; `expected`: key -> the stamp the current input and model give
    (a key not in `expected` is kept as it is: not part of this run's work). A group whose records carry another
    stamp is to be redone; a group without stamps (written before stamps existed) is kept and stamped in place if
    `legacy(key, records)` says it still fits the current input and model, else redone. `stamped`: how many groups
    were stamped in place (the caller rewrites its file)."""
    kept, redo, stamped = {}, [], 0
    for key, recs in groups.items():
        want = expected.get(key)
        if want is None:
            kept[key] = recs
            continue
        stamps = [r.get(KEY) for r in recs]
        if all(matches(s, want) for s in stamps):
            kept[key] = recs
        elif all(s is None for s in stamps) and legacy is not None and legacy(key, recs):
            if want.get("model") is not None:  # stamped once the model is known
                for r in recs:
                    r[KEY] = want
                stamped += 1
            kept[key] = recs
        else:
            redo.append(key)
    return kept, redo, stamped


def rewrite(path: str | Path, groups: dict) -> None:
    """`path` rewritten atomically with the records of `groups` (those to redo left out, the legacy ones stamped)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for recs in groups.values() for r in recs))


def resume(path: str | Path, groups: dict, expected: dict, *, legacy=None, what: str = "records",
           unit: str = "") -> dict:
    """`check` the groups reused from `path`, rewrite it when anything changed, and say how many were redone.
    Returns the groups kept."""
    from core.progress import say

    kept, redo, stamped = check(groups, expected, legacy=legacy)
    if redo or stamped:
        rewrite(path, kept)
    if redo:
        say(f"{what}: {len(redo)} redone (of {len(groups)} {unit or 'reused'}): their input or model changed "
            "since they were written")
    if stamped:
        say(f"{what}: {stamped} written before records were stamped were checked against the current input and "
            "model, and stamped")
    return kept


def resume_prompted(path: str | Path, groups: dict, inputs: dict, model: str | None, *, same_model: bool,
                    what: str, unit: str) -> tuple[dict, dict, list]:
    """`resume` for records of a teacher's prompt: `inputs` is key -> (input text, prompt). Records from before
    stamps are kept (and stamped) if they record the current prompt and `same_model` (the run recorded the current
    model). Returns (groups kept, the expected stamps, the keys redone)."""
    expected = {k: stamp(text, prompt, model) for k, (text, prompt) in inputs.items()}
    kept = resume(path, groups, expected, what=what, unit=unit,
                  legacy=lambda key, recs: same_model and all(r.get("prompt") == inputs[key][1] for r in recs))
    return kept, expected, [k for k in groups if k not in kept]


def of_sample(sample: dict, model: str | None) -> dict:
    """The stamp of a record made from a stamped sample (a score of a self-edit): its input is the sample's stamp
    and text, its model the one that made the record (the student that scored it)."""
    made = sample.get(KEY) or {}
    return stamp(json.dumps([made.get("input"), made.get("model")]), sample["self_edit"], model)

