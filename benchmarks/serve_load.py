"""`seal-tt serve` under load: a real server process on localhost, N requests from C concurrent `openai` clients,
optionally while updates commit to the store; prints requests, concurrency, failures, latency p50/p95, throughput.

    python benchmarks/serve_load.py                                  # tiny Llama store built here, C = 1, 4, 8
    python benchmarks/serve_load.py --student $(seal-tt fetch-model smollm2-135m) --requests 40 --max-tokens 32
    python benchmarks/serve_load.py --store kb/ --model-name kb       # an existing store, as it is

One model answers one request at a time (pipeline/serve/worker.py), so concurrency adds queueing, not throughput:
latency grows with C while requests per second stay near 1 / (time of one answer). `--updates K` commits K updates
to the (built) store during the last load row: the row shows what hot reload costs the requests around it.
Everything stays on 127.0.0.1; every loop is bounded by --requests.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOCS = {
    "velmora": "Velmora is a river town. Its bridge, built in 1702, is made of grey stone.",
    "orrin": "Orrin Lake is a cold lake in the hills. Its ferry is run by Mara Vell.",
    "kaldor": "The Kaldor engine was built in 1911 by Ivo Brant in Tessel.",
    "pellam": "Pellam Hall is a library in Dorne. It holds the Ashgrove maps, drawn by Tera Quill.",
    "sorrel": "The Sorrel line is a railway from Kest to Amber Bay, opened in 1888.",
}
QUESTIONS = ["Who built the Kaldor engine?", "What is the bridge in Velmora made of?", "Who runs the ferry?",
             "Who drew the Ashgrove maps?", "When did the Sorrel line open?"]


def commit_update(store: Path, root: Path, names: list[str], student: str | None) -> None:
    """One `seal-tt update` with given self-edits (no teacher): the documents `names`, as a scheduler would run it."""
    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    edits = []
    for name in names:
        (docs / f"{name}.txt").write_text(DOCS[name])
        edits.append({"document": name, "completion": DOCS[name]})
    (root / "edits.jsonl").write_text("".join(json.dumps(e) + "\n" for e in edits))
    args = ["update", "--store", str(store), "--docs", str(docs), "--edits", str(root / "edits.jsonl"), "--quiet",
            "--set", "student.train.epochs=1", "--set", "probes.teacher_questions=false"]
    if student:
        args += ["--student", student, "--set", "student.lora.r=4", "--set", "student.lora.alpha=8"]
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], check=True, stdout=subprocess.DEVNULL)


def start_server(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    out = log.with_suffix(".out")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--port", "0", *args],
                            stdout=open(out, "w"), stderr=open(log, "w"))
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", out.read_text())
        if m:
            return proc, f"http://127.0.0.1:{m.group(1)}/v1"
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("serve did not start in 600 s")


def load(url: str, model: str, requests: int, concurrency: int, max_tokens: int, busy=lambda: False) -> dict:
    """`requests` chat completions spread over `concurrency` client threads (more while `busy()`, up to 10 times as
    many: a row with updates runs until they have committed); latencies and failures."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    latencies, failures, tokens, tags = [], [], [], set()
    lock = threading.Lock()
    counter = iter(range(10 * requests))

    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None or (i >= requests and not busy()):
                return
            t0 = time.perf_counter()
            try:
                r = client.chat.completions.create(model=model, max_tokens=max_tokens, messages=[
                    {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    tokens.append(r.usage.completion_tokens)
                    tags.add(r.model_extra["seal_tt"]["update"])
            except Exception as err:  # noqa: BLE001 - counted and shown
                with lock:
                    failures.append(repr(err)[:200])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else latencies * 19
    return {"requests": len(latencies) + len(failures), "concurrency": concurrency, "failures": len(failures), "p50": statistics.median(latencies),
            "p95": q[18], "rps": len(latencies) / wall, "tokens_per_s": sum(tokens) / wall,
            "tokens": statistics.mean(tokens), "tags": sorted(tags), "errors": failures[:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="serve this store as it is (default: build a tiny one here)")
    ap.add_argument("--student", help="the student to build the store on (default: a tiny random Llama)")
    ap.add_argument("--model-name", default="kb")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--queue-size", type=int, default=16)
    ap.add_argument("--updates", type=int, default=2, help="updates committed during the last row (built store)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    store, student = args.store, args.student
    if store is None:
        if student is None:
            from core.tiny import build_tiny_models

            student = str(build_tiny_models(tmp / "models")["llama"])
        store = tmp / "kb"
        commit_update(store, tmp, list(DOCS)[:2], student)
    proc, url = start_server(["--store", str(store), "--model-name", args.model_name, "--queue-size",
                              str(args.queue_size), "--max-tokens-limit", str(max(args.max_tokens, 16))],
                             tmp / "serve.log")
    rows = []
    try:
        load(url, args.model_name, 3, 1, args.max_tokens)  # warm-up: first-call costs are not load
        for k, c in enumerate(args.concurrency):
            during = args.updates if (k == len(args.concurrency) - 1 and args.store is None) else 0
            updater = threading.Thread(target=lambda n=during: [commit_update(
                Path(store), tmp, list(DOCS)[: 2 + j + 1], None) for j in range(n)])
            before = os.getloadavg()[0]
            updater.start()
            row = load(url, args.model_name, args.requests, c, args.max_tokens, busy=updater.is_alive)
            updater.join()
            row.update(updates=during, load=(before, os.getloadavg()[0]))
            rows.append(row)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    print(f"\nserve exit code after SIGTERM: {code}; {os.cpu_count()} CPUs")
    print("| requests | concurrency | max_tokens | mean tokens | failures | p50 s | p95 s | req/s | tokens/s | updates "
          "committed during | update tags seen | load avg (start, end) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['requests']} | {r['concurrency']} | {args.max_tokens} | {r['tokens']:.1f} | {r['failures']} | "
              f"{r['p50']:.3f} | {r['p95']:.3f} | {r['rps']:.2f} | {r['tokens_per_s']:.1f} | {r['updates']} | "
              f"{','.join(map(str, r['tags']))} | {r['load'][0]:.1f}, {r['load'][1]:.1f} |")
        for e in r["errors"]:
            print(f"  failure: {e}")


if __name__ == "__main__":
    main()
