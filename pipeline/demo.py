"""`seal-tt demo`: the embedded default the README's main command runs, needing no download."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from pipeline.config import AdaptConfig, load_config


def cache_dir() -> Path:
    return Path(os.environ.get("SEAL_TT_CACHE", Path.home() / ".cache" / "seal-tt"))


def sample_docs() -> Path:
    return Path(str(resources.files("pipeline").joinpath("data/sample_docs.jsonl")))


def quick_demo(output: str | Path = "runs/demo", *, progress: bool = True) -> dict:
    """Tiny random models, the embedded sample documents, one adapt-student run. Checks the plumbing, not learning."""
    from pipeline.adapt import adapt_student
    from pipeline.tiny import build_tiny_models

    models = build_tiny_models(cache_dir() / "tiny")
    config = load_config(
        AdaptConfig,
        None,
        {
            "docs": [str(sample_docs())],
            "output": str(output),
            "teacher": {"model": {"path": str(models["llama"])}, "generation": {"num_samples": 2, "max_new_tokens": 48}},
            "student": {"model": {"path": str(models["qwen2"])}, "lora": {"r": 8, "alpha": 16},
                        "train": {"epochs": 2, "batch_size": 4}, "eval": {"max_new_tokens": 16}},
        },
    )
    return adapt_student(config, progress=progress, force=True)
