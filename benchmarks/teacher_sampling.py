"""Teacher sampling on CPU: transformers (the teacher's backend today) against llama.cpp on an exported GGUF.

The question it answers: would a `teacher.backend: llamacpp` pay for itself? Self-edit sampling is most of a
teacher's time on a CPU. Rows, all on the same prompts (the implications prompt on the first `--passages` SQuAD
validation passages, through the chat template), `--k` samples per prompt, temperature 1, no top-k/top-p, up to
`--max-new-tokens` tokens, stopping at the end of the turn:

- transformers f32, one by one: `TransformersBackend` with batch_size 1 (the prompt re-read per sample);
- transformers f32, batched: `TransformersBackend` with batch_size k (`num_return_sequences`-style, one batch);
- llama.cpp f16 and q8_0: llama-cpp-python on the model exported by `core.gguf_export`, samples one after another
  (the prompt's KV cache reused between a prompt's samples, as llama-cpp-python does).

Each at `--threads` (torch and llama.cpp alike). Prints tokens per second (generated tokens over wall time) and
seconds per self-edit, with the load average before and after each row: on a shared machine the figures are only
comparable within one run.

    python benchmarks/teacher_sampling.py --threads 1 [--json out.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SQUAD = Path(__file__).resolve().parents[2] / "shared/data/seal/general-knowledge/data/squad_val.json"


def load_prompts(n: int) -> list[str]:
    from teacher.prompts import TEMPLATES

    passages = json.loads(SQUAD.read_text(encoding="utf-8"))[:n]
    return [TEMPLATES["implications"].format(title=p["title"], passage=p["context"]) for p in passages]


def load_avg() -> float:
    return os.getloadavg()[0]


def run_transformers(folder: Path, prompts: list[str], k: int, max_new: int, batch: int) -> dict:
    from core.config import GenerationSettings, ModelSettings
    from teacher.backends import TransformersBackend

    backend = TransformersBackend(ModelSettings(path=str(folder), dtype="float32", device="cpu"))
    settings = GenerationSettings(num_samples=k, temperature=1.0, top_p=1.0, max_new_tokens=max_new, batch_size=batch)
    backend.sample(prompts[:1], GenerationSettings(num_samples=1, max_new_tokens=4), [0])  # warm up
    started = time.perf_counter()
    samples = backend.sample(prompts, settings, list(range(len(prompts))))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": sum(s.num_tokens for row in samples for s in row),
            "samples": sum(len(row) for row in samples)}


def run_llamacpp(path: Path, prompt_ids: list[list[int]], stops: set[int], k: int, max_new: int,
                 threads: int) -> dict:
    from llama_cpp import Llama

    longest = max(len(ids) for ids in prompt_ids) + max_new + 8
    llm = Llama(model_path=str(path), n_ctx=longest, n_threads=threads, n_threads_batch=threads, verbose=False)
    list(zip(range(4), llm.generate(prompt_ids[0], temp=1.0)))  # warm up
    tokens = samples = 0
    started = time.perf_counter()
    for p, ids in enumerate(prompt_ids):
        for j in range(k):
            llm.set_seed(1000 * p + j)
            n = 0
            for token in llm.generate(ids, temp=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                if token in stops:
                    break
                n += 1
                if n >= max_new:
                    break
            tokens += n
            samples += 1
    return {"seconds": time.perf_counter() - started, "tokens": tokens, "samples": samples}


def export_files(folder: Path, out_dir: Path) -> dict[str, Path]:
    from core.gguf_export import export_gguf

    files = {}
    for kind in ("f16", "q8_0"):
        files[kind] = out_dir / f"model-{kind}.gguf"
        if not files[kind].exists():
            export_gguf(folder, files[kind], dtype=kind)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a fetchable model name (core.fetch)")
    ap.add_argument("--passages", type=int, default=3)
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default="tf-one,tf-batched,cpp-f16,cpp-q8_0")
    ap.add_argument("--gguf-dir", type=Path, default=None, help="keep the exported GGUF files here (default: temp)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from core.fetch import fetch_model
    from core.models import encode_prompt, load_tokenizer, stop_token_ids

    torch.set_num_threads(args.threads)
    folder = fetch_model(args.model)
    prompts = load_prompts(args.passages)
    tok = load_tokenizer(str(folder))
    prompt_ids = [encode_prompt(tok, p, True) for p in prompts]
    stops = set(stop_token_ids(tok))
    rows = args.rows.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        gguf_dir = args.gguf_dir or Path(tmp)
        gguf_dir.mkdir(parents=True, exist_ok=True)
        files = export_files(folder, gguf_dir) if any(r.startswith("cpp") for r in rows) else {}
        for row in rows:
            before = load_avg()
            if row == "tf-one":
                r = run_transformers(folder, prompts, args.k, args.max_new_tokens, 1)
            elif row == "tf-batched":
                r = run_transformers(folder, prompts, args.k, args.max_new_tokens, args.k)
            elif row in ("cpp-f16", "cpp-q8_0"):
                r = run_llamacpp(files[row[4:]], prompt_ids, stops, args.k, args.max_new_tokens, args.threads)
            else:
                raise SystemExit(f"unknown row {row!r}")
            r.update(row=row, threads=args.threads, load_before=before, load_after=load_avg(),
                     tokens_per_s=r["tokens"] / r["seconds"], s_per_edit=r["seconds"] / r["samples"])
            results.append(r)
            print(f"{row}: {r['tokens']} tokens in {r['seconds']:.1f} s", file=sys.stderr, flush=True)
    print(table(results, args, [len(i) for i in prompt_ids]))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": results},
                                        indent=1) + "\n")


def table(results: list[dict], args, prompt_lengths: list[int]) -> str:
    lines = [f"{args.model}: {args.passages} passages (prompts of {min(prompt_lengths)}-{max(prompt_lengths)} "
             f"tokens) x {args.k} samples, up to {args.max_new_tokens} new tokens, temperature 1", "",
             "| backend | threads | samples | tokens | seconds | tokens/s | s per self-edit | load (before, after) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['row']} | {r['threads']} | {r['samples']} | {r['tokens']} | {r['seconds']:.1f} | "
                     f"{r['tokens_per_s']:.1f} | {r['s_per_edit']:.1f} | "
                     f"{r['load_before']:.2f}, {r['load_after']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
