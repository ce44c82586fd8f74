"""Shared fixtures. Every test runs offline: models are built locally and loaded via from_pretrained."""

import os

# Set before transformers / datasets / huggingface_hub are imported anywhere: a hub lookup would otherwise
# wait on the network for ~20 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SQUAD = SHARED / "data/seal/general-knowledge/data/squad_val.json"
ARC_DIR = SHARED / "data/seal/few-shot/data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_hf_home(tmp_path_factory):
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf_home"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{"llama": Path, "qwen2": Path}: random-weight models saved with save_pretrained."""
    from core.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def squad_file():
    if not SQUAD.exists():
        pytest.skip(f"shared data not found at {SQUAD}")
    return SQUAD


SMALL_WORLD_SIZES = dict(n_pretrain=40, n_pretrain_qa=30, n_rl=20, n_heldout=20)


@pytest.fixture(scope="session")
def tiny_world_recipe():
    """A world recipe that builds in seconds: few people, one-layer models trained for a few steps."""
    from pipeline.world import WorldRecipe
    from pipeline.world.generator import WorldSpec
    from pipeline.world.pretrain import TrainConfig

    return WorldRecipe(
        spec=WorldSpec(**SMALL_WORLD_SIZES),
        student=TrainConfig(layers=1, hidden=32, heads=2, mlp=64, epochs=1, batch_size=32, warmup=2),
        teacher=TrainConfig(layers=1, hidden=32, heads=2, mlp=64, tie_embeddings=True, embed_std=0.1,
                            identity_copy_init=True, per_token_loss=True, epochs=2, examples=64, batch_size=16,
                            warmup=2),
        final_epochs=1,
    )


@pytest.fixture(scope="session")
def default_world(tmp_path_factory):
    """The demo's world, seed 0: one cold build (~4 min on 2 cores) shared by every test that needs it.

    SEAL_TT_CACHE, when set, points at a cache that may already hold it (a developer's machine); CI builds it.
    """
    from pipeline.world import build_world_models

    cache = os.environ.get("SEAL_TT_CACHE")
    if not cache and os.environ.get("PYTEST_XDIST_WORKER"):
        # One folder for all of this run's pytest-xdist workers (their temp folders are siblings): the first builds
        # the world under the build's file lock, a second waits for it and reuses it instead of building it again.
        cache = tmp_path_factory.getbasetemp().parent / "world_cache"
    return build_world_models(cache or tmp_path_factory.mktemp("world_cache"), seed=0)

