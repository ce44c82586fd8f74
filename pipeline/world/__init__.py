"""An embedded synthetic world in which SEAL visibly learns, with its own small student and teacher.

    from pipeline.world import build_world_models
    wm = build_world_models("~/.cache/seal-tt", seed=0)   # minutes the first time, a second afterwards
    wm.student, wm.teacher          # directories for AutoModelForCausalLM / AutoTokenizer.from_pretrained
    wm.data["rl"], wm.data["heldout"]   # documents + questions, in the layout of the paper's SQuAD files
    wm.qa_prompt, wm.teacher_prompt     # the prompt strings both models were trained with

See ``generator`` for the world and ``pretrain`` for the two models; the measurements behind the choices are
in docs/world_research_notes.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .generator import SPLITS, STYLES, WorldSpec, make_world
from .pretrain import DEFAULT_MIX, QA_PROMPT, TEACHER_PROMPT, TrainConfig

# Bump when a change to the generator or the recipes changes what gets built: old caches are then ignored.
VERSION = "4"


def _student_config() -> TrainConfig:
    return TrainConfig(layers=3, hidden=128, heads=4, mlp=512, lr=4e-3, batch_size=128, warmup=100, epochs=20)


def _teacher_config() -> TrainConfig:
    # What made copying learnable in minutes (docs/world_research_notes.md): tied embeddings with a large init,
    # the last layer's value and output maps starting at the identity, attention supervision on the copied words,
    # small batches.
    return TrainConfig(layers=2, hidden=128, heads=4, mlp=512, tie_embeddings=True, embed_std=0.1,
                       identity_copy_init=True, per_token_loss=True, lr=2e-3, batch_size=8, warmup=100, epochs=24,
                       examples=24_000)


@dataclass(frozen=True)
class WorldRecipe:
    """Everything a build depends on besides the seed. The default is the measured demo world."""

    spec: WorldSpec = field(default_factory=WorldSpec)
    student: TrainConfig = field(default_factory=_student_config)
    teacher: TrainConfig = field(default_factory=_teacher_config)
    # The teacher first learns from all styles equally (most copying signal), then its last ``final_epochs``
    # chunks use ``round0_mix``, the style frequencies it will sample before any ReST-EM.
    round0_mix: tuple[tuple[str, float], ...] = tuple(DEFAULT_MIX.items())
    copy_mix: tuple[tuple[str, float], ...] = tuple((s, 1.0 / len(STYLES)) for s in STYLES)
    final_epochs: int = 3
    copy_weight: float = 1.0

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> WorldRecipe:
        return cls(spec=WorldSpec(**data["spec"]), student=TrainConfig(**data["student"]),
                   teacher=TrainConfig(**data["teacher"]),
                   round0_mix=tuple((s, w) for s, w in data["round0_mix"]),
                   copy_mix=tuple((s, w) for s, w in data["copy_mix"]),
                   final_epochs=data["final_epochs"], copy_weight=data["copy_weight"])

    def key(self) -> str:
        """"" for the default recipe (so its cache directory reads plainly), else a short content hash."""
        if self == WorldRecipe():
            return ""
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class WorldModels:
    root: Path
    student: Path
    teacher: Path
    data: dict[str, Path]
    qa_prompt: str
    teacher_prompt: str
    manifest: dict

    @classmethod
    def load(cls, root: Path) -> WorldModels:
        manifest = json.loads((root / "manifest.json").read_text())
        return cls(
            root=root,
            student=root / "student",
            teacher=root / "teacher",
            data={s: root / "data" / f"{s}.json" for s in SPLITS},
            qa_prompt=manifest["qa_prompt"],
            teacher_prompt=manifest["teacher_prompt"],
            manifest=manifest,
        )


def world_dir(cache_dir: str | os.PathLike, seed: int, recipe: WorldRecipe | None = None) -> Path:
    key = (recipe or WorldRecipe()).key()
    return Path(cache_dir).expanduser() / f"world-v{VERSION}-seed{seed}{'-' + key if key else ''}"


def build_world_models(cache_dir: str | os.PathLike, seed: int = 0, recipe: WorldRecipe | None = None, *,
                       parallel: bool | None = None, log=None) -> WorldModels:
    """The world's student and teacher for ``seed``: reused from ``cache_dir`` when built before, else trained.

    A build writes into a temporary directory and renames it into place when complete, under a file lock, so
    an interrupted build leaves nothing that looks finished and two processes never build the same world
    twice. ``parallel`` (default: when the machine has two cores or more) trains the two models in two
    single-threaded processes at once.
    """
    recipe = recipe or WorldRecipe()
    root = world_dir(cache_dir, seed, recipe)
    if _is_built(root, seed, recipe):
        return WorldModels.load(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_built(root, seed, recipe):  # another process built it while we waited
            return WorldModels.load(root)
        tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _build(tmp, seed, recipe, parallel, log or (lambda msg: None))
            if root.exists():  # stale: built by another recipe under the same version (VERSION not bumped)
                shutil.rmtree(root)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return WorldModels.load(root)


def _is_built(root: Path, seed: int, recipe: WorldRecipe) -> bool:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    # A safety net for a recipe edited without bumping VERSION: never hand out models of another recipe.
    wanted = recipe.to_json()
    return manifest.get("seed") == seed and manifest.get("version") == VERSION and manifest.get("recipe") == wanted


def _build(out: Path, seed: int, recipe: WorldRecipe, parallel: bool | None, log) -> None:
    from .tokenizer import build_tokenizer

    t0 = time.time()
    world = make_world(seed, recipe.spec)
    (out / "data").mkdir(parents=True)
    for split in SPLITS:
        (out / "data" / f"{split}.json").write_text(json.dumps(world.records(split), indent=1))
    tok_dir = out / "tokenizer"
    build_tokenizer(world.vocabulary_text()).save_pretrained(tok_dir)
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2
    if parallel:
        # Two single-threaded processes: for models this small that is faster than one process with two
        # threads. Plain subprocesses rather than multiprocessing, which would re-run a caller's unguarded
        # script in each child.
        import subprocess
        import sys

        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[2])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        procs = []
        for which in ("student", "teacher"):
            job = out / f"job-{which}.json"
            job.write_text(json.dumps({"which": which, "seed": seed, "recipe": recipe.to_json(), "out": str(out)}))
            with open(out / f"{which}.log", "w") as logfile:  # a file, not a pipe: a full pipe would block
                procs.append(subprocess.Popen([sys.executable, "-m", "pipeline.world._worker", str(job)], env=env,
                                              stdout=logfile, stderr=subprocess.STDOUT))
        results = []
        try:
            _report_while_running(procs, [out / f"{w}.log" for w in ("student", "teacher")], log)
            for which, proc in zip(("student", "teacher"), procs):
                if proc.wait() != 0:
                    text = (out / f"{which}.log").read_text()
                    raise RuntimeError(f"training the world's {which} failed:\n{text[-4000:]}")
                results.append(json.loads((out / f"done-{which}.json").read_text()))
                (out / f"job-{which}.json").unlink()
                (out / f"done-{which}.json").unlink()
        finally:  # on a failure or Ctrl-C, leave no orphan training
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    else:
        results = [_train_one((which, seed, recipe, str(out))) for which in ("student", "teacher")]
    timings = dict(results)
    shutil.rmtree(tok_dir)
    import tokenizers
    import torch
    import transformers

    manifest = {
        "version": VERSION,
        "seed": seed,
        "recipe": recipe.to_json(),
        "qa_prompt": QA_PROMPT,
        "teacher_prompt": TEACHER_PROMPT,
        "splits": {s: len(world.people[s]) for s in SPLITS},
        "train_seconds": timings,
        "build_seconds": round(time.time() - t0, 1),
        "parallel": parallel,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "python": platform.python_version()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log(f"world seed {seed} built in {manifest['build_seconds']} s: {timings}")


def _report_while_running(procs, logs: list[Path], log, every: float = 30.0) -> None:
    """Pass the workers' latest progress lines to ``log`` every ``every`` seconds until both are done."""
    last = time.monotonic()
    while any(p.poll() is None for p in procs):
        time.sleep(0.5)
        if time.monotonic() - last >= every:
            last = time.monotonic()
            lines = []
            for path in logs:
                text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
                lines.append(f"{path.stem}: {text[-1] if text else 'starting'}")
            log("  " + " | ".join(lines))


def _train_one(job, log=None) -> tuple[str, float]:
    """Train and save one of the two models (run in a worker process when building in parallel)."""
    which, seed, recipe, out = job
    import torch
    from transformers import AutoTokenizer

    from .pretrain import pretrain_student, pretrain_teacher

    out = Path(out)
    torch.set_num_threads(1)
    t0 = time.time()
    world = make_world(seed, recipe.spec)
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    log = log or (lambda msg: None)
    if which == "student":
        model = pretrain_student(world, tok, recipe.student, log=log)
    else:
        model = pretrain_teacher(world, tok, recipe.teacher, mix=dict(recipe.round0_mix),
                                 copy_mix=dict(recipe.copy_mix), final_epochs=recipe.final_epochs,
                                 copy_head=(-1, None), copy_weight=recipe.copy_weight, log=log)
    model.save_pretrained(out / which)
    tok.save_pretrained(out / which)
    return which, round(time.time() - t0, 1)


__all__ = ["VERSION", "WorldModels", "WorldRecipe", "build_world_models", "world_dir"]
