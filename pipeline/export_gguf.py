"""What a user has, written as a GGUF file llama.cpp loads (`seal-tt export --format gguf`, `seal-tt export-gguf`).

The writer (`core.gguf_export`) takes one plain model folder. This module makes that folder from any of:
a model folder (written as it is), a `.gguf` file (its cached float32 conversion, `core.gguf`), either of those with
a LoRA adapter (merged first, in float32, into a temporary folder beside the output), or a knowledge store (its
current student merged by `pipeline.export.export_store(merged=True)`). When the model came from a GGUF file, that
file is handed on so its tokenizer is copied verbatim. Temporary folders go beside the output file, not in /tmp:
a merged 7B model in float32 is 28 GB.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

from core.errors import UserError


@contextmanager
def model_to_export(source: str | None = None, *, adapter: str | Path | None = None, store: str | Path | None = None,
                    workdir: str | Path | None = None, say=None):
    """Yield (model folder, source GGUF file or None) for a model reference, a model + adapter, or a store."""
    with tempfile.TemporaryDirectory(prefix=".seal-tt-gguf-", dir=workdir) as tmp:
        merged = Path(tmp) / "merged"
        if store is not None:
            if source is not None or adapter is not None:
                raise UserError("export a store's student, or a model (with an adapter), not both")
            yield _store_student(store, merged)
            return
        folder, origin = _model_folder(source, say=say)
        if adapter is not None:
            from core.adapters import adapter_config, merge_adapter

            adapter_config(adapter)
            if say:
                say(f"merging {adapter} into {folder.name} (float32)")
            folder = merge_adapter(str(folder), adapter, merged, dtype="float32")
        yield folder, origin


def _model_folder(source: str | None, *, say=None) -> tuple[Path, Path | None]:
    from core.gguf import cached_conversion, gguf_file
    from core.gguf_export import gguf_origin

    if not source:
        raise UserError("name a model to export: a model folder or a .gguf file")
    found = gguf_file(source)
    if found is not None:
        # float32 whatever the machine: the export rounds once, to its own type, and never from bf16.
        return cached_conversion(found, "float32", say=say), found
    folder = Path(source).expanduser()
    if (folder / "store.json").is_file():
        raise UserError(f"{folder} is a knowledge store: export its student with `seal-tt export --store {folder} "
                        "--format gguf`")
    if not (folder / "config.json").is_file():
        raise UserError(f"{source} is not a local model folder (config.json) or .gguf file")
    return folder, gguf_origin(folder)


def _store_student(store, merged: Path) -> tuple[Path, Path | None]:
    from pipeline.export import EXPORT_INFO, export_store

    export_store(store, merged, merged=True)
    info = json.loads((merged / EXPORT_INFO).read_text(encoding="utf-8"))
    origin = (info.get("base") or {}).get("gguf", {}).get("file")
    return merged, Path(origin) if origin and Path(origin).is_file() else None


def export_to_gguf(out_file: str | Path, source: str | None = None, *, adapter=None, store=None, dtype: str = "f16",
                   force: bool = False, lora: bool = False, say=None) -> dict:
    """Write what the user named (see `model_to_export`) to `out_file` as GGUF; the writer's summary.

    `lora`: write only the adapter, as a llama.cpp LoRA GGUF to load beside `source` (`--lora`), unmerged."""
    from core.gguf_export import TYPES, check_target, export_gguf

    out_file = Path(out_file).expanduser()
    if lora:
        from core.gguf_lora import export_lora_gguf

        if adapter is None or source is None or store is not None:
            raise UserError("a LoRA GGUF is written from an adapter and the base model it was trained on")
        return export_lora_gguf(adapter, source, out_file, force=force)
    if dtype not in TYPES:
        raise UserError(f"GGUF type must be one of {', '.join(TYPES)}, got {dtype!r}")
    check_target(out_file, force)  # before a merge that may take minutes
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with model_to_export(source, adapter=adapter, store=store, workdir=out_file.parent, say=say) as (folder, origin):
        if say:
            say(f"writing {out_file} ({dtype})")
        return export_gguf(folder, out_file, dtype=dtype, source_gguf=origin, force=force)
