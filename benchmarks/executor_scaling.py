"""E-step throughput by executor: items per second through the local loop and through Ray with 1 and 2 workers.

The same work items (a knowledge self-edit each: absorb with the inner loop, answer the passage's questions) on the
same student, one torch thread per worker, records checked equal across executors. Worker start-up (process, imports,
model load) is timed apart from steady throughput, since a real round amortises it over hundreds of items.

    python benchmarks/executor_scaling.py                      # tiny Llama, 16 items, this machine's CPUs
    python benchmarks/executor_scaling.py --model PATH --items 32 --epochs 10 --gpus-per-worker 1   # a GPU node

Run it with nothing else on the machine: Ray runs workers at nice 15, and a busy core halves a worker.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SQUAD = ROOT.parent / "shared/data/seal/general-knowledge/data/squad_val.json"


def items_for(n: int):
    from pipeline.documents import load_documents
    from pipeline.work import WorkItem

    docs = load_documents(SQUAD, limit=(n + 1) // 2)
    out = []
    for d in docs:
        sentences = [s.strip() for s in d.text.split(". ") if s.strip()]
        for k in range(2):
            out.append(WorkItem(f"r1/e_step/{d.id}/{k}", d, {"context": d.id, "sample": k, "prompt": "p",
                                                            "self_edit": "\n".join(sentences[k::2][:4]) or d.text},
                                [7]))
    return out[:n]


def timed(executor, student, items) -> tuple[float, float, dict]:
    """(seconds to the first result, seconds for the rest, records by key)."""
    t0 = time.perf_counter()
    first, records = None, {}
    for item, rec, failure in executor.run(student, items):
        if failure is not None:
            raise SystemExit(f"{item.key} failed: {failure.error}")
        if first is None:
            first = time.perf_counter() - t0
        records[item.key] = {k: v for k, v in rec.items() if k != "timings"}
    return first, time.perf_counter() - t0 - first, records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny (built here) or a model folder")
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import ray
    import torch

    from core.config import EvalSettings, ExecutorSettings, LoraSettings, ModelSettings, SelfEditSettings, TrainSettings
    from pipeline.executor import LocalExecutor
    from pipeline.ray_executor import RayExecutor
    from pipeline.tasks.knowledge import KnowledgeTask

    torch.set_num_threads(1)
    if args.model == "tiny":
        from core.tiny import build_tiny_models

        model = str(build_tiny_models(Path(tempfile.mkdtemp()))["llama"])
    else:
        model = args.model
    student = ModelSettings(path=model)
    lora = LoraSettings(r=32, alpha=64)
    task = KnowledgeTask(SelfEditSettings(), TrainSettings(epochs=args.epochs, learning_rate=1e-3),
                         EvalSettings(max_new_tokens=16, use_chat_template="auto", metric="token_f1"))
    items = items_for(args.items)
    rows = []
    first, rest, local = timed(LocalExecutor(task, lora), student, items)
    rows.append({"executor": "local", "workers": 1, "first_s": first, "rest_s": rest,
                 "items_per_s": (len(items) - 1) / rest})
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    for n in map(int, args.workers.split(",")):
        ex = RayExecutor(task, lora, ExecutorSettings(kind="ray", workers=n, cpus_per_worker=args.cpus_per_worker,
                                                      gpus_per_worker=args.gpus_per_worker, threads_per_worker=1))
        first, rest, recs = timed(ex, student, items)
        rows.append({"executor": "ray", "workers": n, "first_s": first, "rest_s": rest,
                     "items_per_s": (len(items) - 1) / rest, "records_equal_local": recs == local})
    ray.shutdown()
    base = rows[1]["items_per_s"]
    print(f"model {args.model}, {len(items)} items, {args.epochs} epochs, {os.cpu_count()} CPUs, 1 thread a worker\n")
    print("| executor | workers | to first result (s) | items/s after it | vs Ray x1 | records equal local |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['executor']} | {r['workers']} | {r['first_s']:.1f} | {r['items_per_s']:.3f} | "
              f"{r['items_per_s'] / base:.2f}x | {r.get('records_equal_local', '—')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
