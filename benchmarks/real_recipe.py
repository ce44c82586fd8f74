"""Choosing an absorption recipe for a small chat student (SmolLM2-135M-Instruct), then evaluating it once.

Every job: one passage, one condition. The student (a fresh seeded LoRA) absorbs the condition's training texts,
then answers the passage's questions closed book, greedily, read to the end of its turn (at most 64 new tokens);
the reply is kept whole so it can be graded again without retraining, and so is the adapter
(`adapters/<job>.safetensors`). The open-book condition answers with the passage in the prompt and no adapter: the
ceiling. Passages come from the committed split (`benchmarks/squad_split.py`); selection plans never touch an
evaluation passage.

Conditions:
    none         no adaptation
    open         open book: the passage in the prompt, no adapter (the ceiling)
    passage      the passage only
    implications / rewrite / long / self_qa   the paper's Qwen2.5-7B base completion in that form (the first one),
                 its sequences title-prefixed, the passage appended (the paper's protocol)

Plans:
    forms        selection: alt0 0-31 (passage, rewrite, long, self_qa, none, open) and train0 0-31 (passage,
                 implications, none, open), the paper's inner loop, next-token loss
    distill:F,G  selection: alt0 0-15, forms F and G absorbed by context distillation (weight 1 and 0.5; with
                 question-answer exchanges for a question-answer form)

    inner:F:S    selection: alt0 0-15, form F with stage 2's setting S beside S+all (LoRA on every linear layer at
                 twice the learning rate) and S+ep20 (twice the epochs)
    eval         the one evaluation, on passages 0-47: none, open, passage, implications, rl1 (0-23) with the
                 paper's inner loop, and the recipe frozen in configs/knowledge_smollm2_recipe.yaml
    eval-baselines  the same without the recipe's row, runnable before the recipe is frozen

    python benchmarks/real_recipe.py run --run runs/recipe_forms --plan forms --shard auto   # one process per core
    python benchmarks/real_recipe.py run --run runs/recipe_forms --plan forms --shard auto
    python benchmarks/real_recipe.py report --run runs/recipe_forms --out benchmarks/results/real_recipe
    python benchmarks/real_recipe.py choose --run runs/recipe_forms --incumbent paper/rewrite \
        --candidates distill/rewrite distill-0.5/rewrite paper/long distill/long distill-0.5/long   # stage 2's choice

    python benchmarks/real_recipe.py save --run runs/recipe_eval --as eval      # records into results/real_recipe/raw
    python benchmarks/real_recipe.py restore --run runs/recipe_eval --as eval   # and back: resume or regrade anywhere

Each job is one line of a `records*.jsonl`, appended when done; a rerun skips what is there. `--shard auto` workers
share a plan: each takes the next job whose lock (`claims/`) no one holds, and writes its own records file; `--shard
k/n` splits it by position instead.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_squad  # noqa: E402
import squad_split  # noqa: E402

SYN = squad_split.SYN
QA_PROMPT = "Answer the question with a short answer.\nQuestion: {question}\nAnswer:"
OPEN_PROMPT = "Answer the question with a short answer, using the passage.\nPassage: {passage}\nQuestion: {question}\nAnswer:"
MAX_NEW_TOKENS = 64
FORM_FILES = {
    "alt0": {f: f"train/alternate_prompts/iter0_train_prompt-{name}.json"
             for f, name in (("rewrite", "rewrite"), ("long", "long"), ("self_qa", "self-qa"))},
    "train0": {"implications": "train/iter0_train.json"},
    "eval": {"implications": "eval/base_val.json", "rl1": "eval/iter1_val.json",
             **{f: f"eval/alternate_prompts/base/base_val_prompt-{name}.json"
                for f, name in (("rewrite", "rewrite"), ("long", "long"), ("self_qa", "self-qa"))}},
}
# How a form's completion becomes sequences: lines for lists and rewrites, question-answer pairs for self-QA.
SPLIT = {"self_qa": "qa"}


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
    objective: str = "nll"
    distill_weight: float = 1.0
    # Add question-answer exchanges: the self-edit's questions answered by the student with the passage in view.
    exchanges: bool = False


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SETTINGS = {
    "paper": Setting(),
    # Stage 2: the absorption objective, on the paper's inner loop.
    "distill": Setting(objective="context_distill"),
    "distill-0.5": Setting(objective="context_distill", distill_weight=0.5),
    "distill-x": Setting(objective="context_distill", exchanges=True),
}
# Stage 3: the inner loop around stage 2's objective: LoRA on every linear layer at twice the learning rate ("LoRA
# without regret": attention-only LoRA underfits, and LoRA's best rate sits above full finetuning's), or twice the
# epochs. Named "<base>+all" / "<base>+ep20" for each stage-2 setting.
for _name, _s in list(SETTINGS.items()):
    SETTINGS[f"{_name}+all"] = replace(_s, targets=ALL_LINEAR, lr=2 * _s.lr)
    SETTINGS[f"{_name}+ep20"] = replace(_s, epochs=20)
# The recipe frozen in a shipped config before the evaluation run (plan `eval`); its form is the config's prompt.
RECIPE_CONFIG = ROOT / "configs/knowledge_smollm2_recipe.yaml"
PROMPT_FORM = {"implications": "implications", "rewrite": "rewrite", "long_implications": "long", "self_qa": "self_qa"}


@functools.cache
def recipe() -> tuple[str, Setting]:
    """The frozen recipe: (form, inner loop), read from the shipped config, so the evaluation runs what ships."""
    from core.config import load_config
    from pipeline.settings.adapt import AdaptConfig

    if not RECIPE_CONFIG.exists():
        raise SystemExit(f"{RECIPE_CONFIG} is not written yet: freeze the recipe before the evaluation run")
    cfg = load_config(AdaptConfig, RECIPE_CONFIG)
    lora, train = cfg.student.lora, cfg.student.train
    setting = Setting(r=lora.r, alpha=lora.alpha, targets=tuple(lora.target_modules), lr=train.learning_rate,
                      epochs=train.epochs, batch_size=train.batch_size, scheduler=train.lr_scheduler,
                      objective=train.objective, distill_weight=train.distill_weight,
                      exchanges=False)
    return PROMPT_FORM[cfg.self_edit.prompt], setting


def setting_of(name: str) -> Setting:
    return recipe()[1] if name == "recipe" else SETTINGS[name]


@dataclass
class Job:
    pool: str
    setting: str
    condition: str
    passage: int  # index into the pool
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{self.pool}/{self.setting}/{self.condition}/{self.passage}/{self.seed}"


def plan(name: str) -> list[Job]:
    jobs: list[Job] = []
    if name == "forms":
        alt0 = squad_split.indices("selection", "alt0")
        train0 = squad_split.indices("selection", "train0")
        # Interleaved per passage: a run stopped early holds every condition paired on its first passages.
        for a, t in zip(alt0, train0):
            jobs += [Job("alt0", "paper", c, a) for c in ("none", "open", "passage", "self_qa", "rewrite", "long")]
            jobs += [Job("train0", "paper", c, t) for c in ("none", "open", "passage", "implications")]
        return jobs
    if name.startswith("distill:"):
        # distill:FORM,FORM — context distillation against next-token loss on the two best forms of stage 1, on the
        # first 16 selection passages of alt0 (the paper-setting rows come from the forms plan).
        forms = name.split(":", 1)[1].split(",")
        for a in squad_split.indices("selection", "alt0")[:16]:
            jobs += [Job("alt0", st, f, a) for f in forms for st in ("distill", "distill-0.5", "distill-x")
                     if st != "distill-x" or SPLIT.get(f) == "qa"]
        return jobs
    if name.startswith("inner:"):
        # inner:FORM:SETTING — stage 3 on the first 16 selection passages of alt0: SETTING (stage 2's choice, whose
        # rows are already in the run) beside it on every linear layer and with twice the epochs.
        form, base = name.split(":")[1:]
        for a in squad_split.indices("selection", "alt0")[:16]:
            jobs += [Job("alt0", f"{base}{v}", form, a) for v in ("+all", "+ep20")]
        return jobs
    if name in ("eval", "eval-baselines"):
        # The one evaluation: passages 0-47 as real_squad's table, (a)-(d) with the paper's inner loop, (d) on 0-23,
        # the ceiling, and the frozen recipe (plan `eval` only; `eval-baselines` runs the rest before it is frozen).
        evaluation = [i for i in squad_split.indices("evaluation", "eval") if i < 48]
        for i in evaluation:
            jobs += [Job("eval", "paper", c, i) for c in ("none", "open", "passage", "implications")
                     + (("rl1",) if i < 24 else ())]
            if name == "eval":
                jobs.append(Job("eval", "recipe", recipe()[0], i))
        return jobs
    raise SystemExit(f"unknown plan {name!r}")


# ------------------------------------------------------------------------------------------------- data


class Data:
    def __init__(self):
        self.pools = {name: squad_split.pool(name) for name in squad_split.POOLS}
        self._forms: dict[tuple[str, str], list[dict]] = {}

    def completion(self, pool: str, form: str, index: int) -> str:
        if (pool, form) not in self._forms:
            self._forms[pool, form] = json.loads((SYN / FORM_FILES[pool][form]).read_text(encoding="utf-8"))
        rec = self._forms[pool, form][index]
        if rec["context"] != self.pools[pool][index]["context"]:
            raise SystemExit(f"{FORM_FILES[pool][form]}[{index}] is another passage than {pool}[{index}]")
        return rec["completions"][0]

    def document(self, pool: str, index: int):
        from pipeline.documents import Document, Question

        rec = self.pools[pool][index]
        qs = [Question(q["question"], (q["answer"],) if isinstance(q["answer"], str) else tuple(q["answer"]))
              for q in rec["questions"]]
        return Document(id=f"{pool}-{index:03d}", title=rec["title"], text=rec["context"], questions=qs)


# ---------------------------------------------------------------------------------------------- running


class Bench(real_squad.Bench):
    """Its engines (one resident base, one LoRA shape each) as real_squad's; its own data and answers."""

    def __init__(self, run: Path, model: str, threads: int):
        import torch

        from core.config import EvalSettings, ModelSettings

        torch.set_num_threads(threads)
        self.run = run
        self.model_path = model
        self.engines: dict = {}
        self.base_model = None
        self.tokenizer = None
        self.eval = EvalSettings(max_new_tokens=MAX_NEW_TOKENS, batch_size=16, qa_prompt=QA_PROMPT,
                                 open_book_prompt=OPEN_PROMPT, metric="contains", answer_until="turn")
        self.model_settings = ModelSettings(path=model, dtype="float32", device="cpu")
        self.data = Data()

    def train_settings(self, setting: Setting):
        from core.config import TrainSettings

        extra = {}
        if setting.objective != "nll":
            extra = {"objective": setting.objective, "distill_weight": setting.distill_weight}
        return TrainSettings(learning_rate=setting.lr, epochs=setting.epochs, batch_size=setting.batch_size,
                             lr_scheduler=setting.scheduler, max_length=2048, checkpoint_minutes=0, **extra)

    def texts(self, job: Job, doc) -> tuple[list[str], dict]:
        from core.config import SelfEditSettings
        from pipeline.tasks.knowledge import split_self_edit_report, with_title

        if job.condition in ("none", "open"):
            return [], {}
        settings = SelfEditSettings(prompt="implications", split=SPLIT.get(job.condition, "lines"),
                                    prefix_title=True, include_passage=True, max_sequences=30)
        passage = with_title(doc, doc.text, settings)
        if job.condition == "passage":
            return [passage], {}
        pieces, report = split_self_edit_report(self.data.completion(job.pool, job.condition, job.passage), settings)
        texts = [with_title(doc, t, settings) for t in pieces] + [passage]
        if setting_of(job.setting).exchanges:
            from pipeline.tasks.knowledge import exchanges, pair_questions

            engine = self.engine(setting_of(job.setting))
            engine.reset()  # the student as it is, no adapter, answers with the passage in view
            added = exchanges(engine, doc, pair_questions(pieces), self.eval)
            texts += added
            report = {**report, "exchanges": len(added)}
        return texts, report

    def answers(self, engine, doc, open_book: bool) -> list[dict]:
        from pipeline.tasks import knowledge

        prompts = [(OPEN_PROMPT.format(passage=f"{doc.title}\n{doc.text}", question=q.question) if open_book
                    else QA_PROMPT.format(question=q.question)) for q in doc.questions]
        replies = engine.reply(prompts, max_new_tokens=MAX_NEW_TOKENS, batch_size=16, until="turn")
        tokens = engine.last_generation.new_tokens
        return [{"q": q.question, "gold": list(q.answers), "pred": r, "new_tokens": n,
                 "preamble_only": knowledge.is_preamble_only(r)}
                for q, r, n in zip(doc.questions, replies, tokens)]

    def run_job(self, job: Job) -> dict:
        from safetensors.torch import save_file

        from core.seeds import context_seed

        setting = setting_of(job.setting)
        engine = self.engine(setting)
        doc = self.data.document(job.pool, job.passage)
        start = time.perf_counter()
        texts, info = self.texts(job, doc)
        seed = context_seed(job.seed, doc.id)
        engine.reset(seed=seed)
        train = {"sequences": len(texts), "tokens": 0, "seconds": 0.0, "final_loss": None}
        if texts:
            ts = self.train_settings(setting)
            if setting.objective == "nll":
                stats = engine.train_texts(texts, ts, seed=seed)
            else:
                stats = engine.train_texts(texts, ts, seed=seed, contexts=[f"{doc.title}\n{doc.text}"] * len(texts))
            train.update(tokens=stats.tokens, seconds=stats.seconds, final_loss=stats.final_loss, steps=stats.steps)
            adapters = self.run / "adapters"
            adapters.mkdir(exist_ok=True)
            save_file(engine.adapter_state(), str(adapters / (job.key.replace("/", "__") + ".safetensors")))
        else:
            engine.reset()
        t_eval = time.perf_counter()
        questions = self.answers(engine, doc, open_book=job.condition == "open")
        return {"key": job.key, **asdict(job), "inner_loop": asdict(setting), "seed_used": seed, "train": train,
                "info": info, "eval_seconds": time.perf_counter() - t_eval,
                "seconds": time.perf_counter() - start, "questions": questions}


def _records_files(run: Path) -> list[Path]:
    return sorted(run.glob("records*.jsonl"))


def _same_bench(old: dict, new: dict) -> bool:
    """The same bench, where a setting or a setting's field added since (at its default) is no change."""
    def rest(meta):
        return {k: v for k, v in meta.items() if k not in ("settings", "recipe")}

    if rest(old) != rest(new):
        return False
    # Baseline rows run before the recipe was frozen (plan eval-baselines) are the same bench as the evaluation's.
    if "recipe" in old and "recipe" in new and old["recipe"] != new["recipe"]:
        return False
    default = asdict(Setting())
    for name, fields in old["settings"].items():
        now = new["settings"].get(name)
        if now is None or any(now.get(k) != v for k, v in fields.items()) or \
                any(now[k] != default[k] for k in now if k not in fields):
            return False
    return True


def cmd_run(args) -> None:
    from core.fetch import fetch_model
    from core.models import resolve_model_path
    from core.rundir import append_jsonl, atomic_write_json, repair_jsonl

    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    model = args.model or str(fetch_model("smollm2-135m"))
    meta = {"qa_prompt": QA_PROMPT, "open_prompt": OPEN_PROMPT, "max_new_tokens": MAX_NEW_TOKENS,
            "settings": {k: asdict(v) for k, v in SETTINGS.items()},
            # The frozen recipe is part of an evaluation run's identity: a changed config refuses to resume it.
            **({"recipe": asdict(recipe()[1]) | {"form": recipe()[0]}} if args.plan == "eval" else {}),
            "split_sha256": squad_split.sha(squad_split.SPLIT_FILE.read_text(encoding="utf-8"))}
    meta = json.loads(json.dumps(meta))
    if (run / "bench.json").exists():
        old = json.loads((run / "bench.json").read_text())
        if not _same_bench(old, meta):
            raise SystemExit(f"{run} was started with other settings (bench.json differs); use another --run")
        meta.setdefault("recipe", old.get("recipe"))
        if meta["recipe"] is None:
            del meta["recipe"]
    atomic_write_json(run / "bench.json", meta)
    jobs = plan(args.plan)
    if args.shard == "auto":
        records = run / f"records.auto-{os.getpid()}.jsonl"
    else:
        k, n = (int(x) for x in args.shard.split("/"))
        records = run / f"records.{k}.jsonl"
        jobs = [j for i, j in enumerate(jobs) if i % n == k]
    # Only this worker's own file: another's may be mid-append (a torn last line is skipped when read).
    repair_jsonl(records)
    done = _done(run)
    todo = [j for j in jobs if j.key not in done]
    print(f"{len(jobs)} jobs in plan {args.plan} shard {args.shard}, {len(jobs) - len(todo)} done, {len(todo)} to run",
          flush=True)
    bench = Bench(run, resolve_model_path(model, dtype="float32", device="cpu"), args.threads)
    for i, job in enumerate(todo, 1):
        with _claim(run, job) as mine:
            # auto: another worker holds the job or finished it since this one started: skip it.
            if not mine or (args.shard == "auto" and job.key in _done(run)):
                continue
            rec = bench.run_job(job)
            append_jsonl(records, rec)
        print(f"[{i}/{len(todo)}] {job.key}: {rec['train']['sequences']} seqs, {rec['seconds']:.0f} s", flush=True)


def _done(run: Path) -> set[str]:
    from core.rundir import read_jsonl

    return {r["key"] for f in _records_files(run) for r in read_jsonl(f)}


@contextlib.contextmanager
def _claim(run: Path, job: Job):
    """Hold the job's lock while it runs, so workers started with --shard auto share a plan without a schedule;
    the kernel drops the lock of a killed worker, and its job is run again by whoever comes next."""
    import fcntl

    claims = run / "claims"
    claims.mkdir(exist_ok=True)
    with open(claims / job.key.replace("/", "__"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


# --------------------------------------------------------------------------------------------- reporting


def cmd_choose(args) -> None:
    """Apply the selection rule (recipe_report.choose) to a stage: `--incumbent paper/rewrite --candidates
    distill/rewrite distill-0.5/rewrite paper/long ...`."""
    from recipe_report import choose, grade, load

    records = load([Path(r) for r in args.run])
    grade(records, args.grader)
    result = choose(records, "alt0", tuple(args.incumbent.split("/")), [tuple(c.split("/")) for c in args.candidates])
    print(json.dumps(result, indent=1))


def cmd_report(args) -> None:
    from recipe_report import report

    data = Data()
    report([Path(r) for r in args.run], Path(args.out) if args.out else None, args.grader,
           passage_text=lambda pool, i: data.pools[pool][i]["context"])


RAW = ROOT / "benchmarks/results/real_recipe/raw"


def cmd_save(args) -> None:
    from raw_records import save

    for name, n in save(Path(args.run), Path(args.raw), args.name).items():
        print(f"{Path(args.raw) / name}: {n} records")


def cmd_restore(args) -> None:
    from raw_records import restore

    done = restore(Path(args.run), Path(args.raw), args.name)
    for name, n in done.items():
        print(f"{Path(args.run) / name}: {n} records")
    if not done:
        print(f"{args.run} already holds every saved record")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) a plan into --run")
    r.add_argument("--run", required=True)
    r.add_argument("--plan", default="forms")
    r.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct from the package index")
    r.add_argument("--shard", default="0/1", help="k/n: this process runs the plan's jobs i with i %% n == k; "
                   "auto: workers share the plan, each taking the next job no one holds")
    r.add_argument("--threads", type=int, default=1)
    r.set_defaults(fn=cmd_run)
    q = sub.add_parser("report", help="tables with paired intervals, ceiling ratio and kept share")
    q.add_argument("--run", required=True, nargs="+")
    q.add_argument("--out", default=None)
    q.add_argument("--grader", default="contains")
    q.set_defaults(fn=cmd_report)
    c = sub.add_parser("choose", help="the selection rule: does the best candidate beat the incumbent?")
    c.add_argument("--run", required=True, nargs="+")
    c.add_argument("--grader", default="contains_numeric")
    c.add_argument("--incumbent", required=True, help="setting/form, e.g. paper/rewrite")
    c.add_argument("--candidates", required=True, nargs="+")
    c.set_defaults(fn=cmd_choose)
    for cmd, fn, what in (("save", cmd_save, "gzip a run's records into the repo's raw folder"),
                          ("restore", cmd_restore, "write saved records back into a run folder, to resume or regrade")):
        x = sub.add_parser(cmd, help=what)
        x.add_argument("--run", required=True)
        x.add_argument("--as", dest="name", required=True, help="the saved files' prefix, e.g. eval or forms")
        x.add_argument("--raw", default=str(RAW))
        x.set_defaults(fn=fn)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
