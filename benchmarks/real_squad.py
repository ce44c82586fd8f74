"""The SEAL paper's knowledge protocol on a real model: SmolLM2-135M-Instruct learning SQuAD passages.

One passage at a time, the student (LoRA r=32 alpha=64 on q/v, 10 epochs, lr 1e-3 with linear decay, batch 1: the
paper's inner loop) absorbs a condition's training texts and then answers the passage's questions closed book,
greedily. Conditions, on the paper's 200 evaluation passages in the order of `synthetic_data/eval/base_val.json`:

    none     (a) no adaptation
    passage  (b) the passage only
    base     (c) the paper's Qwen2.5-7B base-model implications (base_val.json, first completion)
    rl1      (d) its implications after one RL round (iter1_val.json, first completion; same passages)
    self     (e) SmolLM2's own implications (one sample through its chat template, temperature 1)
    multi    (f) (c)'s self-edits of all the run's passages in one adapter (3 epochs, batch 8 = the paper's 4 x 2
                 accumulation steps, lr 1e-3)

Every record holds the answers and three graders per question: answer-contained, SQuAD token F1, and the dense
scores of `pipeline.tasks.knowledge.dense_scores` (gold log-probability, its margin over the passage's other answers,
and its rank among them). The run folder resumes: each (split, setting, condition, passage, seed) is one line of
records.jsonl, written when done, skipped when rerun.

    python benchmarks/real_squad.py run --run runs/real_squad --plan main      # hours on a CPU; resumable
    python benchmarks/real_squad.py run --run runs/real_squad_tune --plan tune  # may run beside the main plan
    python benchmarks/real_squad.py report --run runs/real_squad runs/real_squad_tune --out benchmarks/results/real_squad

`report` prints the tables (macro average over passages, paired bootstrap 95 % intervals against the passage-only
condition), validates the dense metrics against greedy correctness, draws the plot, and writes the compact
per-passage results that are committed (no answers, a few KB). The full records are committed too, gzipped
(`benchmarks/results/real_squad/raw/`), so a run can continue on another machine:

    mkdir -p runs/real_squad && zcat benchmarks/results/real_squad/raw/records_main.jsonl.gz > runs/real_squad/records.jsonl
    cp benchmarks/results/real_squad/raw/self_edits.jsonl runs/real_squad/
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"
GK = SHARED / "data/seal/general-knowledge/data"
BASE_VAL = GK / "synthetic_data/eval/base_val.json"
ITER1_VAL = GK / "synthetic_data/eval/iter1_val.json"
ITER0_TRAIN = GK / "synthetic_data/train/iter0_train.json"
TUNE_FROM = 92

CONDITIONS = {
    "none": "(a) no adaptation",
    "passage": "(b) passage only",
    "base": "(c) Qwen2.5-7B base implications",
    "rl1": "(d) Qwen2.5-7B implications after 1 RL round",
    "self": "(e) SmolLM2's own implications",
    "multi": "(f) (c) of all passages in one adapter",
}
QA_PROMPT = "Answer the question with a short answer.\nQuestion: {question}\nAnswer:"
# The paper's Table (Qwen2.5-7B, 200 passages, 974 questions, GPT-4.1 judge): reference only, not the same measure.
PAPER = {"none": 0.327, "passage": 0.335, "base": 0.397, "rl1": 0.427}
PAPER_MULTI = 0.582  # base implications, n=200 continued pretraining, same table's multi-passage column


@dataclass(frozen=True)
class Setting:
    """An inner loop: the LoRA and how it trains on one passage's texts."""

    r: int = 32
    alpha: int = 64
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 1
    scheduler: str = "linear"


SETTINGS = {
    "paper": Setting(),
    # Candidates for a 135M student, tried on tuning passages only (see `--plan tune`).
    "lr3e-4": Setting(lr=3e-4),
    "all-proj": Setting(targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                        lr=3e-4, epochs=5),
}
MULTI = Setting(epochs=3, batch_size=8)


@dataclass
class Job:
    split: str  # "eval" (the 200 of base_val) or "tune" (iter0_train passages outside the RL subset)
    setting: str
    condition: str
    passage: int  # index into the split's passage list; for multi: how many passages the adapter holds
    seed: int

    @property
    def key(self) -> str:
        return f"{self.split}/{self.setting}/{self.condition}/{self.passage}/{self.seed}"


# ------------------------------------------------------------------------------------------------- data


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def passages(split: str) -> list[dict]:
    """Records with title, context, questions and the first paper completion under `completions`."""
    if split == "eval":
        base, rl1 = _load(BASE_VAL), _load(ITER1_VAL)[:200]
        for b, r in zip(base, rl1):
            if b["context"] != r["context"]:
                raise SystemExit("iter1_val.json's first 200 passages are not base_val.json's, in order")
            b["rl1_completions"] = r["completions"]
        return base
    if split == "tune":
        # The last 8 of iter0_train.json's 100 SQuAD training passages, with the paper's base-model completions; the
        # ReST-EM round (real_rest_em.sh) uses the first 92. squad_val.json's passages outside the 200 evaluation
        # ones have no paper self-edits to tune the inner loop with.
        return _load(ITER0_TRAIN)[TUNE_FROM:]
    raise SystemExit(f"unknown split {split!r}")


def document(rec: dict, index: int):
    from pipeline.documents import Document, Question

    qs = [Question(q["question"], (q["answer"],) if isinstance(q["answer"], str) else tuple(q["answer"]))
          for q in rec["questions"]]
    return Document(id=f"p{index:03d}", title=rec["title"], text=rec["context"], questions=qs)


def plan(name: str, n_main: int, n_small: int, n_seeds: int, n_tune: int, tune_settings: list[str]) -> list[Job]:
    jobs: list[Job] = []
    if name == "main":
        # Interleaved per passage, so a run stopped early still holds every condition paired on its first passages.
        for i in range(n_small):
            jobs += [Job("eval", "paper", c, i, 0) for c in ("none", "passage", "base", "rl1", "self")]
        jobs.append(Job("eval", "paper", "multi", n_small, 0))
        for i in range(n_small, n_main):
            jobs += [Job("eval", "paper", c, i, 0) for c in ("none", "passage", "base")]
        for s in range(1, 3):
            for i in range(n_seeds):
                jobs += [Job("eval", "paper", c, i, s) for c in ("passage", "base")]
    elif name == "tune":
        for i in range(n_tune):
            jobs += [Job("tune", st, c, i, 0) for st in tune_settings for c in ("passage", "base")]
            jobs.append(Job("tune", "paper", "none", i, 0))
    else:
        raise SystemExit(f"unknown plan {name!r}")
    return jobs


# ---------------------------------------------------------------------------------------------- running


class Bench:
    def __init__(self, run: Path, model: str, threads: int):
        import torch

        from core.config import EvalSettings, ModelSettings, SelfEditSettings
        from pipeline.tasks.knowledge import Grader

        torch.set_num_threads(threads)
        self.run = run
        self.model_path = model
        self.engines: dict[Setting, object] = {}
        self.base_model = None
        self.tokenizer = None
        self.eval = EvalSettings(max_new_tokens=32, batch_size=16, qa_prompt=QA_PROMPT, metric="contains")
        self.grader = Grader(self.eval)
        self.self_edit = SelfEditSettings(prompt="implications", split="lines", prefix_title=True,
                                          include_passage=True, max_sequences=30)
        self.model_settings = ModelSettings(path=model, dtype="float32", device="cpu")
        self.data = {s: passages(s) for s in ("eval", "tune")}

    def engine(self, setting: Setting):
        """One resident base shared by every LoRA shape (PEFT wraps a fresh copy of the module tree per shape)."""
        import copy

        from core.config import LoraSettings
        from core.models import load_causal_lm, load_tokenizer
        from student.engine import StudentEngine

        key = (setting.r, setting.alpha, setting.targets)
        if key not in self.engines:
            if self.base_model is None:
                self.tokenizer = load_tokenizer(self.model_path)
                self.base_model = load_causal_lm(self.model_path, dtype="float32", device="cpu")
            lora = LoraSettings(r=setting.r, alpha=setting.alpha, target_modules=list(setting.targets))
            self.engines[key] = StudentEngine(self.model_settings, lora, base_model=copy.deepcopy(self.base_model),
                                              tokenizer=self.tokenizer)
        return self.engines[key]

    def train_settings(self, setting: Setting):
        from core.config import TrainSettings

        return TrainSettings(learning_rate=setting.lr, epochs=setting.epochs, batch_size=setting.batch_size,
                             lr_scheduler=setting.scheduler, max_length=2048, checkpoint_minutes=0)

    def texts(self, job: Job, doc, rec: dict) -> tuple[list[str], dict]:
        from pipeline.tasks.knowledge import split_self_edit_report, with_title

        if job.condition == "none":
            return [], {}
        if job.condition == "passage":
            return [with_title(doc, doc.text, self.self_edit)], {}
        if job.condition == "self":
            completion, info = self.own_implications(job, doc)
        else:
            completion = rec["rl1_completions" if job.condition == "rl1" else "completions"][0]
            info = {}
        pieces, report = split_self_edit_report(completion, self.self_edit)
        texts = [with_title(doc, t, self.self_edit) for t in pieces] + [with_title(doc, doc.text, self.self_edit)]
        return texts, {**info, **report}

    def own_implications(self, job: Job, doc) -> tuple[str, dict]:
        """SmolLM2 writes the self-edit itself, with the adapter off; kept in self_edits.jsonl and reused."""
        from core.config import GenerationSettings
        from core.rundir import append_jsonl, read_jsonl
        from core.seeds import context_seed
        from pipeline.tasks.knowledge import teacher_prompt
        from teacher.backends import TransformersBackend
        from teacher.prompts import load_template

        store = self.run / "self_edits.jsonl"
        key = f"{job.split}/{job.passage}/{job.seed}"
        for row in read_jsonl(store):
            if row["key"] == key:
                return row["completion"], {"sample_seconds": row["seconds"], "sample_tokens": row["tokens"]}
        engine = self.engine(SETTINGS["paper"])
        engine.reset()
        backend = TransformersBackend(self.model_settings, peft_model=engine.model, tokenizer=engine.tokenizer)
        gen = GenerationSettings(num_samples=1, temperature=1.0, top_p=1.0, max_new_tokens=512, batch_size=1)
        start = time.perf_counter()
        with engine.model.disable_adapter():
            sample = backend.sample([teacher_prompt(doc, load_template("implications"))], gen,
                                    [context_seed(job.seed, doc.id)])[0][0]
        seconds = time.perf_counter() - start
        append_jsonl(store, {"key": key, "completion": sample.text, "tokens": sample.num_tokens,
                             "finished": sample.finished, "seconds": seconds})
        return sample.text, {"sample_seconds": seconds, "sample_tokens": sample.num_tokens}

    def evaluate(self, engine, docs) -> list[dict]:
        from pipeline.tasks import knowledge

        results = knowledge.evaluate(engine, docs, self.eval, self.grader)
        dense = knowledge.dense_scores(engine, docs, self.eval)
        return [{"doc": r.document, "q": r.question, "gold": r.answers, "pred": r.prediction,
                 "contains": r.metrics["contains"], "f1": r.metrics["token_f1"], "em": r.metrics["exact_match"],
                 **{k: d[k] for k in ("answer_logprob", "answer_margin", "answer_rank")}}
                for r, d in zip(results, dense)]

    def run_job(self, job: Job) -> dict:
        from core.seeds import context_seed

        setting = MULTI if job.condition == "multi" else SETTINGS[job.setting]
        engine = self.engine(setting)
        recs = self.data[job.split]
        start = time.perf_counter()
        info: dict = {}
        if job.condition == "multi":
            docs = [document(recs[i], i) for i in range(job.passage)]
            texts = [t for i, d in enumerate(docs) for t in self.texts(replace(job, condition="base", passage=i),
                                                                        d, recs[i])[0]]
            seed = job.seed
        else:
            docs = [document(recs[job.passage], job.passage)]
            texts, info = self.texts(job, docs[0], recs[job.passage])
            seed = context_seed(job.seed, docs[0].id)
        engine.reset(seed=seed)
        train = {"sequences": len(texts), "tokens": 0, "seconds": 0.0, "final_loss": None}
        if texts:
            stats = engine.train_texts(texts, self.train_settings(setting), seed=seed)
            train.update(tokens=stats.tokens, seconds=stats.seconds, final_loss=stats.final_loss, steps=stats.steps)
        t_eval = time.perf_counter()
        questions = self.evaluate(engine, docs)
        return {"key": job.key, **asdict(job), "inner_loop": asdict(setting), "seed_used": seed, "train": train,
                "info": info, "eval_seconds": time.perf_counter() - t_eval,
                "seconds": time.perf_counter() - start, "questions": questions}


def cmd_run(args) -> None:
    from core.fetch import fetch_model
    from core.rundir import append_jsonl, atomic_write_json, read_jsonl, repair_jsonl

    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    model = args.model or fetch_model("smollm2-135m")
    meta = json.loads(json.dumps({"model": str(model), "qa_prompt": QA_PROMPT, "multi": asdict(MULTI),
                                  "settings": {k: asdict(v) for k, v in SETTINGS.items()}}))
    if (run / "bench.json").exists():
        old = json.loads((run / "bench.json").read_text())
        if old != meta:
            raise SystemExit(f"{run} was started with other settings (bench.json differs); use another --run")
    else:
        atomic_write_json(run / "bench.json", meta)
    records = run / "records.jsonl"
    repair_jsonl(records)
    done = {r["key"] for r in read_jsonl(records)}
    jobs = plan(args.plan, args.passages, args.small, args.seed_passages, args.tune_passages, args.tune_settings)
    todo = [j for j in jobs if j.key not in done]
    print(f"{len(jobs)} jobs in plan {args.plan}, {len(jobs) - len(todo)} done, {len(todo)} to run", flush=True)
    bench = Bench(run, str(model), args.threads)
    for n, job in enumerate(todo, 1):
        rec = bench.run_job(job)
        append_jsonl(records, rec)
        c = sum(q["contains"] for q in rec["questions"]) / max(1, len(rec["questions"]))
        print(f"[{n}/{len(todo)}] {job.key}: contains {c:.2f}, {rec['train']['sequences']} seqs, "
              f"{rec['seconds']:.0f} s", flush=True)


# --------------------------------------------------------------------------------------------- reporting


def _mean(xs):
    xs = [x for x in xs if x is not None and x == x]
    return sum(xs) / len(xs) if xs else None


def paired_ci(diffs: list[float], n_boot: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-passage differences and its percentile-bootstrap 95 % interval (passages resampled)."""
    rng = random.Random(seed)
    n = len(diffs)
    boots = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return sum(diffs) / n, boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]


def per_passage(rec: dict) -> dict[int, dict]:
    """A record's scores per passage (multi holds several): macro-averaged over that passage's questions."""
    out: dict[int, dict] = {}
    by_doc: dict[str, list[dict]] = {}
    for q in rec["questions"]:
        by_doc.setdefault(q["doc"], []).append(q)
    for doc, qs in by_doc.items():
        out[int(doc[1:])] = {m: _mean([q[m] for q in qs]) for m in
                             ("contains", "f1", "em", "answer_logprob", "answer_margin", "answer_rank")} | {
            "n": len(qs)}
    return out


def table(records: list[dict], split: str, setting: str, seed: int = 0) -> tuple[dict, dict]:
    """condition -> passage -> scores, and condition -> median seconds per self-edit."""
    scores: dict[str, dict[int, dict]] = {}
    seconds: dict[str, list[float]] = {}
    for r in records:
        if r["split"] != split or r["setting"] != setting or r["seed"] != seed:
            continue
        scores.setdefault(r["condition"], {}).update(per_passage(r))
        total = r["seconds"] + r["info"].get("sample_seconds", 0.0)
        # (f) trains one adapter on every passage's self-edit: its cost per self-edit is the total over passages.
        seconds.setdefault(r["condition"], []).append(total / r["passage"] if r["condition"] == "multi" else total)
    med = {c: sorted(v)[len(v) // 2] for c, v in seconds.items()}
    return scores, med


def validate_dense(records: list[dict]) -> dict:
    """Does a dense metric move with greedy correctness? Two checks on the eval records (all conditions):
    question level, how well each metric separates right from wrong greedy answers (AUC); passage level, when
    a condition changes a passage's answer-contained against no adaptation, how often the metric moves the same way."""
    qs = [q for r in records if r["split"] == "eval" for q in r["questions"]]
    out = {}
    for m in ("answer_logprob", "answer_margin", "answer_rank"):
        pos = [q[m] for q in qs if q[m] is not None and q["contains"] == 1.0]
        neg = [q[m] for q in qs if q[m] is not None and q["contains"] == 0.0]
        auc = None
        if pos and neg:
            wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
            auc = wins / (len(pos) * len(neg))
        out[m] = {"auc": auc, "right": len(pos), "wrong": len(neg)}
    scores, _ = table(records, "eval", "paper")
    base = scores.get("none", {})
    for m in ("answer_logprob", "answer_margin", "answer_rank"):
        agree = disagree = 0
        for cond, ps in scores.items():
            if cond == "none":
                continue
            for i, s in ps.items():
                if i not in base or s[m] is None or base[i][m] is None:
                    continue
                dc = s["contains"] - base[i]["contains"]
                dm = s[m] - base[i][m]
                if dc == 0 or dm == 0:
                    continue
                agree += (dc > 0) == (dm > 0)
                disagree += (dc > 0) != (dm > 0)
        out[m]["sign_agreement"] = agree / (agree + disagree) if agree + disagree else None
        out[m]["changed_passages"] = agree + disagree
    return out


def cmd_report(args) -> None:
    from core.rundir import read_jsonl

    records = [r for run in args.run for r in read_jsonl(Path(run) / "records.jsonl")]
    if not records:
        raise SystemExit(f"no records in {args.run}")
    lines = []
    scores, med = table(records, "eval", "paper")
    ref = scores.get("passage", {})
    metrics = [("contains", "answer contained"), ("f1", "token F1"), ("answer_rank", "gold rank")]
    head = "| condition | passages | questions | " + " | ".join(
        f"{label} | vs (b)" for _, label in metrics) + " | median s per self-edit | paper (7B, judge) |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for cond in CONDITIONS:
        ps = scores.get(cond)
        if not ps:
            continue
        row = [CONDITIONS[cond], str(len(ps)), str(sum(p["n"] for p in ps.values()))]
        for m, _ in metrics:
            row.append(f"{_mean([p[m] for p in ps.values()]):.3f}")
            paired = [ps[i][m] - ref[i][m] for i in ps if i in ref and ps[i][m] is not None and ref[i][m] is not None]
            if cond == "passage" or len(paired) < 2:
                row.append("—")
            else:
                mean, lo, hi = paired_ci(paired)
                row.append(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] (n={len(paired)})")
        row.append(f"{med[cond]:.0f}")
        row.append(f"{PAPER_MULTI if cond == 'multi' else PAPER.get(cond, float('nan')):.3f}"
                   if cond in PAPER or cond == "multi" else "—")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    # Seed noise: the same passages and condition under three seeds.
    seeds = sorted({r["seed"] for r in records if r["split"] == "eval" and r["condition"] in ("passage", "base")})
    if len(seeds) > 1:
        lines.append("Seed noise (answer contained, same passages, per seed):")
        for cond in ("passage", "base"):
            per = [table(records, "eval", "paper", s)[0].get(cond, {}) for s in seeds]
            common = sorted(set.intersection(*[set(p) for p in per])) if all(per) else []
            if common:
                vals = [_mean([p[i]["contains"] for i in common]) for p in per]
                spread = _mean([max(p[i]["contains"] for p in per) - min(p[i]["contains"] for p in per)
                                for i in common])
                lines.append(f"- {CONDITIONS[cond]}: {len(common)} passages, seeds {seeds}: "
                             + ", ".join(f"{v:.3f}" for v in vals)
                             + f"; mean per-passage range over seeds {spread:.3f}")
        lines.append("")
    val = validate_dense(records)
    lines.append("Dense metrics against greedy correctness (eval records, all conditions):")
    for m, v in val.items():
        auc = "—" if v["auc"] is None else f"{v['auc']:.3f}"
        agr = "—" if v["sign_agreement"] is None else f"{v['sign_agreement']:.2f}"
        lines.append(f"- {m}: AUC right vs wrong {auc} ({v['right']} right, {v['wrong']} wrong); same direction "
                     f"as answer-contained on {agr} of {v['changed_passages']} passage changes against (a)")
    lines.append("")
    tune = [r for r in records if r["split"] == "tune"]
    if tune:
        lines.append("Inner-loop tuning (iter0_train.json passages 92-99: not evaluation passages, not the ReST-EM round's):")
        for st in sorted({r["setting"] for r in tune}):
            sc, md = table(records, "tune", st)
            parts = []
            for cond in ("none", "passage", "base"):
                if cond in sc:
                    ps = sc[cond]
                    parts.append(f"{cond} contains {_mean([p['contains'] for p in ps.values()]):.3f} "
                                 f"rank {_mean([p['answer_rank'] for p in ps.values()]):.3f} "
                                 f"({len(ps)} passages, {md[cond]:.0f} s)")
            lines.append(f"- {st} {json.dumps(asdict(SETTINGS[st]))}: " + "; ".join(parts))
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(text + "\n", encoding="utf-8")
        with open(out / "per_passage.jsonl", "w", encoding="utf-8") as f:
            for r in records:
                for i, s in sorted(per_passage(r).items()):
                    f.write(json.dumps({"key": r["key"], "passage": i, "n": s["n"],
                                        **{k: None if s[k] is None else round(s[k], 4) for k in s if k != "n"},
                                        "sequences": r["train"]["sequences"],
                                        "seconds": round(r["seconds"] + r["info"].get("sample_seconds", 0.0), 1)})
                            + "\n")
        plot(scores, out / "real_squad.png")


def plot(scores: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = [c for c in CONDITIONS if c in scores]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (m, label) in zip(axes, [("contains", "answer contained"), ("answer_rank", "gold rank among rivals")]):
        means, los, his = [], [], []
        for c in conds:
            vals = [p[m] for p in scores[c].values() if p[m] is not None]
            mean = sum(vals) / len(vals)
            rng = random.Random(0)
            boots = sorted(sum(vals[rng.randrange(len(vals))] for _ in vals) / len(vals) for _ in range(2000))
            means.append(mean)
            los.append(mean - boots[50])
            his.append(boots[1949] - mean)
        ax.bar(range(len(conds)), means, yerr=[los, his], capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(conds)), [CONDITIONS[c].split(" ")[0] + " " + c for c in conds], rotation=30,
                      ha="right")
        ax.set_ylabel(label)
        ax.set_title(f"SmolLM2-135M, {label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) a plan into --run")
    r.add_argument("--run", required=True)
    r.add_argument("--plan", default="main", choices=["main", "tune"])
    r.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct from the package index")
    r.add_argument("--passages", type=int, default=48, help="evaluation passages for (a)-(c)")
    r.add_argument("--small", type=int, default=24, help="evaluation passages for (d)-(f)")
    r.add_argument("--seed-passages", type=int, default=8, help="passages run under two more seeds (b, c)")
    r.add_argument("--tune-passages", type=int, default=8)
    r.add_argument("--tune-settings", type=lambda s: s.split(","), default=["paper", "lr3e-4"])
    r.add_argument("--threads", type=int, default=1)
    r.set_defaults(fn=cmd_run)
    q = sub.add_parser("report", help="tables, dense-metric validation, plot, compact results")
    q.add_argument("--run", required=True, nargs="+", help="run folders (e.g. the main plan's and the tuning's)")
    q.add_argument("--out", default=None)
    q.set_defaults(fn=cmd_report)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
