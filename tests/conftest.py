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

    cache = os.environ.get("SEAL_TT_CACHE") or tmp_path_factory.mktemp("world_cache")
    return build_world_models(cache, seed=0)


# With pytest-xdist (`make test` runs two workers), tests that share something costly or process-global run on one
# worker, in order: the demo's world (built once per worker that needs it: minutes), Ray's local cluster, torchrun /
# DeepSpeed jobs (two ranks each, gloo on localhost), and the real model's conversion cache.
_GROUP_BY_FILE = {
    "test_executor.py": "ray", "test_adapt_executor.py": "ray",
    "test_deepspeed.py": "distributed", "test_m_step_deepspeed.py": "distributed",
    "test_cli_adapt_sharded.py": "distributed",
    "test_real_model.py": "real", "test_gguf.py": "real", "test_gguf_export.py": "real", "test_gguf_llamacpp.py": "real",
}


def pytest_collection_modifyitems(config, items):
    world = set()
    for item in items:
        if "default_world" in getattr(item, "fixturenames", ()):
            group = "world"
            world.add(item.nodeid)
        else:
            group = _GROUP_BY_FILE.get(item.path.name)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    # The world's group is the longest chain (its build, then the demo and the store's world tests): started first,
    # it runs beside everything else instead of after it.
    items.sort(key=lambda item: item.nodeid not in world)
