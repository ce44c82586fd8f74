"""Inner-loop speed: seconds per evaluated self-edit, seal-tt against a SEAL-style reference loop.

SEAL scores every candidate self-edit by finetuning the student on it and asking it the document's questions; the
paper reports ~29 s of wall time per evaluated self-edit (750 evaluations in ~6 h on 2 H100s, Qwen2.5-7B). This script
runs a fixed set of real self-edits through three loops on the same model, with the same seeds, and prints seconds per
self-edit by phase (adapter reset, training, adapter save+reload, answer generation, grading):

- reference: what the paper's inner-loop server does per request: wrap the base with `get_peft_model`, build a
  `datasets.Dataset` padded to a fixed `--max-length` and a fresh HF `Trainer`, train, save the adapter to disk, load it
  back for evaluation (in-process here; the paper loaded it into a separate vLLM server), unload, delete, `gc.collect`;
- seal-tt: `StudentEngine`: one resident LoRA reset in place, a short loop with dynamic padding, batched greedy answers;
- seal-tt batched: `student.batched.BatchedLoraBank.train_many` / `answer_many`: `--group` self-edits trained in the same forward and
  backward passes over the frozen base, one LoRA per row, and answered in the same generation batches.

All three train on identical token ids with pads masked out of the loss, start each self-edit from the same LoRA draw
and visit its sequences in the same order, and decode identically; the reference differs only in the overheads listed.
The script checks that (final LoRA and answers agree) and prints the agreement beside the timings. It also measures
the device's matmul rate and memory bandwidth and prints the arithmetic floor of the work done (training and
generation FLOPs over the matmul rate; weight reads over the bandwidth), so a GPU run needs no code change:

    python benchmarks/inner_loop.py                                   # CPU, tiny model, a few minutes
    python benchmarks/inner_loop.py --model qwen2.5-7b --device cuda --dtype bfloat16 --json out.json

`--model` is a named shape (random weights built on the device, see `core/shapes.py`) or a local model folder.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared/data/seal/general-knowledge/data/synthetic_data/eval/base_val.json"
BUNDLED_DATA = ROOT / "benchmarks/data/base_val_head.json"  # its first 8 passages; see make_data.py
DEFAULT_DATA = SHARED_DATA if SHARED_DATA.exists() else BUNDLED_DATA
DEFAULT_TOKENIZER = ROOT / "benchmarks/data/squad8k-tokenizer.json.gz"
PHASES = ("reset", "train", "adapter_io", "generate", "grade")
PHASE_LABELS = {
    "reset": "adapter reset / wrap",
    "train": "training",
    "adapter_io": "adapter save + reload",
    "generate": "answer generation",
    "grade": "grading",
    "total": "**total**",
}
LOOPS = ("reference", "seal-tt", "batched")
PAPER_SECONDS_PER_EDIT = 28.8  # 750 evaluations in ~6 h (wall, 2 H100s, Qwen2.5-7B student)

# Used when the shared data folder is absent: two passages, two self-edits each, in the paper's implications style.
EMBEDDED = [
    {
        "title": "Velmora",
        "context": "Velmora is a river town founded in 1412 by wool traders. Its old bridge, built of grey granite in "
        "1530, has seven arches. The town hall keeps a bell cast by Ada Quill, the first woman to lead the "
        "bell-founders' guild. Every spring Velmora holds a wool market that draws buyers from three countries.",
        "questions": [
            {"question": "When was Velmora founded?", "answer": "1412"},
            {"question": "How many arches does the old bridge have?", "answer": "seven"},
            {"question": "Who cast the town hall bell?", "answer": "Ada Quill"},
        ],
        "completions": [
            "1. Velmora was founded by wool traders in 1412.\n2. The old bridge of Velmora is made of grey granite.\n"
            "3. The bridge, finished in 1530, has seven arches.\n4. Ada Quill cast the bell in Velmora's town hall.\n"
            "5. Ada Quill was the first woman to lead the bell-founders' guild.",
            "Velmora's wool trade is older than its bridge by more than a century.\nBuyers from three countries come "
            "to the spring wool market.\nThe town hall bell is the work of a guild leader, Ada Quill.\nGranite was "
            "chosen for the seven-arched bridge in 1530.",
        ],
    },
    {
        "title": "Harlan Observatory",
        "context": "The Harlan Observatory stands on Mount Orel at 2,310 metres. Its main telescope, a 1.8-metre "
        "reflector, saw first light in 1974. The observatory discovered the comet Harlan-Vey in 1986, named after "
        "its director Irene Vey. Winter storms close the summit road from December to March.",
        "questions": [
            {"question": "On which mountain is the Harlan Observatory?", "answer": "Mount Orel"},
            {"question": "When did the main telescope see first light?", "answer": "1974"},
            {"question": "Who was the observatory's director when the comet was found?", "answer": "Irene Vey"},
        ],
        "completions": [
            "1. The Harlan Observatory is on Mount Orel, 2,310 metres high.\n2. Its 1.8-metre reflector first "
            "observed the sky in 1974.\n3. Comet Harlan-Vey was discovered there in 1986.\n4. The comet carries the "
            "name of director Irene Vey.\n5. The summit road is closed by storms from December to March.",
            "Irene Vey directed the Harlan Observatory in 1986.\nThe main instrument is a reflecting telescope 1.8 "
            "metres across.\nWinter makes Mount Orel's summit unreachable by road for four months.",
        ],
    },
]


# ------------------------------------------------------------------------------------------------ inputs
@dataclass
class Edit:
    id: str
    texts: list[str]
    questions: list[str]
    answers: list[list[str]]
    seed: int


def load_edits(data: str, docs: int, per_doc: int, seed: int) -> tuple[list[Edit], str]:
    """`docs` passages x `per_doc` of their self-edits, as training texts the knowledge task would train on."""
    from core.config import SelfEditSettings
    from pipeline.documents import load_documents
    from pipeline.tasks.knowledge import training_texts

    path = Path(data) if data != "embedded" else None
    if path is not None and path.exists():
        records = json.loads(path.read_text(encoding="utf-8"))[:docs]
        documents = load_documents([path], limit=docs)
        source = str(path)
    else:
        records = EMBEDDED[:docs]
        tmp = Path(tempfile.mkdtemp(prefix="seal_tt_edits_")) / "embedded.json"
        tmp.write_text(json.dumps(records), encoding="utf-8")
        documents = load_documents([tmp])
        shutil.rmtree(tmp.parent, ignore_errors=True)
        source = "embedded (shared data not found)" if path is not None else "embedded"
    settings = SelfEditSettings()
    edits = []
    for doc, record in zip(documents, records):
        for j, completion in enumerate(record["completions"][:per_doc]):
            edits.append(Edit(
                id=f"{doc.id}/{j}",
                texts=training_texts(doc, [completion], settings),
                questions=[q.question for q in doc.questions],
                answers=[list(q.answers) for q in doc.questions],
                seed=seed + len(edits),
            ))
    if not edits:
        raise SystemExit(f"no self-edits found in {source}")
    return edits, source


@dataclass
class EditRun:
    phases: dict[str, float]
    answers: list[str]
    score: float
    train_tokens: int = 0
    train_steps: int = 0
    train_lengths: list[int] = field(default_factory=list)  # tokens of every sequence trained on, all epochs
    prompt_tokens: list[int] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    decode_steps: float = 0.0  # generation batches' steps charged to this edit
    lora: dict | None = None


class Clock:
    """Wall time that includes queued device work: phases end at a synchronisation point."""

    def __init__(self, device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


# ---------------------------------------------------------------------------------------------------- loops
class SealTTLoop:
    name = "seal-tt"

    def __init__(self, engine, train, evaluation, grader, clock):
        self.engine, self.train, self.eval, self.grader, self.clock = engine, train, evaluation, grader, clock

    def run(self, edits: list[Edit], train=None) -> list[EditRun]:
        return [self.run_edit(e, train or self.train) for e in edits]

    def run_edit(self, edit: Edit, train) -> EditRun:
        e = self.engine
        t0 = self.clock()
        e.reset(seed=edit.seed)
        t1 = self.clock()
        examples = e.encode(edit.texts, train.max_length)
        stats = e.train(examples, train, seed=edit.seed)
        t2 = self.clock()
        answers = e.answer(edit.questions, qa_prompt=self.eval.qa_prompt, use_chat_template=self.eval.use_chat_template,
                           max_new_tokens=self.eval.max_new_tokens, batch_size=self.eval.batch_size)
        t3 = self.clock()
        scores, _ = self.grader(edit.questions, answers, edit.answers)
        t4 = self.clock()
        gen = e.last_generation
        lengths = [len(x.input_ids) for x in examples]
        return EditRun(
            phases={"reset": t1 - t0, "train": t2 - t1, "adapter_io": 0.0, "generate": t3 - t2, "grade": t4 - t3},
            answers=answers, score=_mean(scores), train_tokens=stats.tokens, train_steps=stats.steps,
            train_lengths=lengths * train.epochs, prompt_tokens=gen.prompt_tokens, new_tokens=gen.new_tokens,
            decode_steps=sum(gen.batch_steps), lora=e.adapter_state(),
        )


class BatchedLoop(SealTTLoop):
    name = "batched"

    def __init__(self, *args, group: int, max_pass_tokens: int | None = None):
        from student.batched import BatchedLoraBank

        super().__init__(*args)
        self.group = group
        self.bank = BatchedLoraBank(self.engine)
        self.bank.max_pass_tokens = max_pass_tokens

    def run(self, edits: list[Edit], train=None) -> list[EditRun]:
        out = []
        for start in range(0, len(edits), self.group):
            out.extend(self.run_group(edits[start : start + self.group], train or self.train))
        return out

    def run_group(self, edits: list[Edit], train) -> list[EditRun]:
        e, bank, n = self.engine, self.bank, len(edits)
        t0 = self.clock()
        example_sets = [e.encode(x.texts, train.max_length) for x in edits]
        stats = bank.train_many(example_sets, train, seeds=[x.seed for x in edits])
        t1 = self.clock()
        answers = bank.answer_many([x.questions for x in edits], qa_prompt=self.eval.qa_prompt,
                                   use_chat_template=self.eval.use_chat_template,
                                   max_new_tokens=self.eval.max_new_tokens, batch_size=self.eval.batch_size)
        t2 = self.clock()
        scores = [self.grader(x.questions, a, x.answers)[0] for x, a in zip(edits, answers)]
        t3 = self.clock()
        gen = e.last_generation
        runs, pos = [], 0
        for k, (edit, st) in enumerate(zip(edits, stats)):
            q = len(edit.questions)
            runs.append(EditRun(
                # The bank's initialisation is part of train_many; it is a few small copies.
                phases={"reset": 0.0, "train": (t1 - t0) / n, "adapter_io": 0.0, "generate": (t2 - t1) / n,
                        "grade": (t3 - t2) / n},
                answers=answers[k], score=_mean(scores[k]), train_tokens=st.tokens, train_steps=st.steps,
                train_lengths=[len(x.input_ids) for x in example_sets[k]] * train.epochs,
                prompt_tokens=gen.prompt_tokens[pos : pos + q], new_tokens=gen.new_tokens[pos : pos + q],
                decode_steps=sum(gen.batch_steps) / n, lora=bank.bank_state(k),
            ))
            pos += q
        return runs


class ReferenceLoop:
    """The paper's per-request inner loop (knowledge-incorporation/src/inner/TTT_server.py), minus its network hops.

    Kept apart from seal-tt on purpose: wrap per request, a fresh Trainer, sequences padded to `max_length`, adapter
    written to disk and read back. Two things are aligned so that results can be compared (neither changes the
    cost): pads are masked out of the loss (the paper's labels were a copy of the padded ids), and the LoRA's initial
    draw and the order of sequences per epoch follow the same seeds as seal-tt's. The paper also re-ran the baseline
    (no adapter) generation on every request; that is left out here, which flatters the reference.
    """

    name = "reference"

    def __init__(self, base, tokenizer, lora, train, evaluation, grader, clock, workdir: Path, newline_ids,
                 padding: str = "max_length"):
        self.base, self.tok, self.lora, self.padding = base, tokenizer, lora, padding
        self.train, self.eval, self.grader, self.clock = train, evaluation, grader, clock
        self.workdir, self.newline_ids = workdir, newline_ids
        self.device = next(base.parameters()).device

    def run(self, edits: list[Edit], train=None) -> list[EditRun]:
        return [self.run_edit(e, train or self.train) for e in edits]

    def run_edit(self, edit: Edit, train) -> EditRun:
        import torch
        from datasets import Dataset
        from peft import PeftModel, get_peft_model
        from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, PrinterCallback, TrainingArguments

        from student.data import IGNORE_INDEX, encode_texts
        from core.lora import lora_config
        from student.engine import seeded_lora_state

        tmp = self.workdir / f"inner_TTT_{edit.seed}"
        t0 = self.clock()
        model = get_peft_model(self.base, lora_config(self.lora))
        lora_params = {n: p for n, p in model.named_parameters() if "lora_" in n}
        with torch.no_grad():
            for name, value in seeded_lora_state(lora_params, edit.seed).items():
                lora_params[name].copy_(value)
        t1 = self.clock()
        examples = encode_texts(self.tok, edit.texts, train.max_length)
        pad = self.tok.pad_token_id
        if self.padding == "max_length":
            width = train.max_length
            rows = [
                {
                    "input_ids": ex.input_ids + [pad] * (width - len(ex.input_ids)),
                    "attention_mask": [1] * len(ex.input_ids) + [0] * (width - len(ex.input_ids)),
                    "labels": ex.labels + [IGNORE_INDEX] * (width - len(ex.input_ids)),
                }
                for ex in examples
            ]
            collator = DataCollatorWithPadding(self.tok)
        else:  # an ablation: the same machinery without the padding waste
            rows = [{"input_ids": ex.input_ids, "attention_mask": [1] * len(ex.input_ids), "labels": ex.labels}
                    for ex in examples]
            collator = DataCollatorForSeq2Seq(self.tok, label_pad_token_id=IGNORE_INDEX)
        bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        args = TrainingArguments(
            output_dir=str(tmp), per_device_train_batch_size=train.batch_size, gradient_accumulation_steps=1,
            num_train_epochs=train.epochs, learning_rate=train.learning_rate, lr_scheduler_type=train.lr_scheduler,
            warmup_steps=train.warmup_ratio, weight_decay=train.weight_decay,
            max_grad_norm=train.max_grad_norm or 0.0, logging_steps=1, save_strategy="no", report_to="none",
            remove_unused_columns=False, fp16=False, bf16=bf16, seed=edit.seed, disable_tqdm=True,
            use_cpu=self.device.type == "cpu",
        )
        trainer = _SameOrderTrainer(
            order_seed=edit.seed, model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator,
        )
        # With tqdm off the Trainer prints every log line instead; a server would log them, not print them.
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
        t2 = self.clock()
        lora = {n: p.detach().to("cpu", copy=True) for n, p in lora_params.items()}
        t2b = self.clock()
        adapter = tmp / "final_adapter"
        model.save_pretrained(str(adapter))
        base = model.unload()
        served = PeftModel.from_pretrained(base, str(adapter))
        t3 = self.clock()
        answers = self._answers(served, edit.questions)
        t4 = self.clock()
        self.base = served.unload()
        shutil.rmtree(tmp, ignore_errors=True)
        del trainer, model, served
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        t5 = self.clock()
        scores, _ = self.grader(edit.questions, answers, edit.answers)
        t6 = self.clock()
        return EditRun(
            phases={"reset": t1 - t0, "train": t2 - t1, "adapter_io": (t3 - t2b) + (t5 - t4), "generate": t4 - t3,
                    "grade": t6 - t5},
            answers=answers, score=_mean(scores), train_tokens=sum(len(x.input_ids) for x in examples) * train.epochs,
            train_steps=result.global_step, train_lengths=[len(r["input_ids"]) for r in rows] * train.epochs,
            lora=lora,
        )

    def _answers(self, model, questions: list[str]) -> list[str]:
        """The same prompts, batching and stopping rule as `StudentEngine.answer`, on the reloaded adapter."""
        import torch

        from core.models import encode_prompt, use_chat
        from student.data import left_pad
        from student.engine import _StopOnTokens, first_line

        chat = use_chat(self.tok, self.eval.use_chat_template)
        prompts = [encode_prompt(self.tok, self.eval.qa_prompt.format(question=q), chat) for q in questions]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out = [""] * len(prompts)
        model.eval()
        with torch.no_grad():
            for b in range(0, len(order), self.eval.batch_size):
                idx = order[b : b + self.eval.batch_size]
                ids, mask = left_pad([prompts[i] for i in idx], self.tok.pad_token_id)
                gen = model.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    max_new_tokens=self.eval.max_new_tokens, do_sample=False, temperature=None, top_p=None,
                    top_k=None, pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
                    stopping_criteria=[_StopOnTokens(self.newline_ids)],
                )
                for row, i in enumerate(idx):
                    out[i] = first_line(self.tok.decode(gen[row, ids.shape[1] :], skip_special_tokens=True))
        return out


def _same_order_trainer():
    from transformers import Trainer

    class SameOrderTrainer(Trainer):
        """Trainer whose epochs visit the dataset in seal-tt's order for the same seed (`student.engine` draws)."""

        def __init__(self, *args, order_seed: int, **kwargs):
            self._order_seed = order_seed
            super().__init__(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            return _EpochPermutations(len(train_dataset or self.train_dataset), self._order_seed)

    return SameOrderTrainer


class _EpochPermutations:
    def __init__(self, n: int, seed: int):
        import torch

        self.n = n
        self.gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch

        return iter(torch.randperm(self.n, generator=self.gen).tolist())


def _SameOrderTrainer(**kwargs):  # noqa: N802 - a class built lazily, so that importing this file stays cheap
    return _same_order_trainer()(**kwargs)


# ------------------------------------------------------------------------------------------- probes + floor
def probe_matmul(device, dtype, seconds: float = 1.0) -> float:
    """Sustained FLOP/s of a square matmul in `dtype` (best of several timed batches)."""
    import torch

    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    clock = Clock(device)
    torch.matmul(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        t0 = clock()
        for _ in range(4):
            torch.matmul(a, b)
        t1 = clock()
        best = max(best, 4 * 2 * n**3 / (t1 - t0))
    return best


def probe_bandwidth(device, seconds: float = 0.5) -> float:
    """Device memory bandwidth in bytes/s from a large copy (each element read once and written once)."""
    import torch

    numel = (1 << 28) if device.type == "cuda" else (1 << 24)  # 1 GiB / 64 MiB of float32
    src = torch.empty(numel, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    clock = Clock(device)
    dst.copy_(src)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        t0 = clock()
        dst.copy_(src)
        t1 = clock()
        best = max(best, 2 * src.numel() * src.element_size() / (t1 - t0))
    return best


def floor_per_edit(runs: list[EditRun], dims, weight_bytes: int, flops_rate: float, bandwidth: float,
                   steps_per_edit: float) -> dict:
    """The arithmetic floor of the work one self-edit needs, averaged over `runs`.

    Compute: training and generation FLOPs (`core.shapes.Dims`) over the measured matmul rate. Memory: every
    optimizer step reads the weights twice (forward, backward), every decoding step and every prefill once; batching
    several edits shares those reads, which `steps_per_edit` and `decode_steps` account for.
    """
    n = len(runs)
    train_flops = sum(dims.lora_train_flops(length) for r in runs for length in r.train_lengths) / n
    gen_flops = sum(dims.generate_flops(p, t) for r in runs for p, t in zip(r.prompt_tokens, r.new_tokens)) / n
    decode_steps = sum(r.decode_steps for r in runs) / n
    train_bytes = 2 * weight_bytes * steps_per_edit
    gen_bytes = weight_bytes * decode_steps
    train_floor = max(train_flops / flops_rate, train_bytes / bandwidth)
    gen_floor = max(gen_flops / flops_rate, gen_bytes / bandwidth)
    return {
        "train_tokens": sum(sum(r.train_lengths) for r in runs) / n,
        "new_tokens": sum(sum(r.new_tokens) for r in runs) / n,
        "train_flops": train_flops,
        "generate_flops": gen_flops,
        "compute_floor_s": (train_flops + gen_flops) / flops_rate,
        "memory_floor_s": (train_bytes + gen_bytes) / bandwidth,
        "floor_s": train_floor + gen_floor,
    }


# ------------------------------------------------------------------------------------------------- summary
def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def per_edit_phases(runs: list[EditRun]) -> dict[str, float]:
    out = {p: _mean(r.phases[p] for r in runs) for p in PHASES}
    out["total"] = sum(out[p] for p in PHASES)
    return out


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(repeats: list[dict[str, list[EditRun]]]) -> dict:
    """Per loop and phase: median and range over repeats of mean seconds per edit; ratios paired within a repeat."""
    loops = [name for name in LOOPS if name in repeats[0]]
    per_repeat = [{name: per_edit_phases(rep[name]) for name in loops} for rep in repeats]
    keys = (*PHASES, "total")
    seconds = {name: {k: spread([r[name][k] for r in per_repeat]) for k in keys} for name in loops}
    ratios = {}
    for name in loops:
        if name == "reference" or "reference" not in loops:
            continue
        ratios[name] = {}
        for k in keys:
            pairs = [r["reference"][k] / r[name][k] for r in per_repeat if r[name][k] > 0]
            ratios[name][k] = spread(pairs) if pairs else None
    if "batched" in loops:
        # Batched against one-by-one seal-tt, paired per repeat: what training edits together buys on this device.
        ratios["batched_vs_seal-tt"] = {
            k: spread([r["seal-tt"][k] / r["batched"][k] for r in per_repeat if r["batched"][k] > 0] or [0.0])
            for k in ("train", "generate", "total")
        }
    return {"seconds": seconds, "ratios": ratios, "per_repeat": per_repeat}


def agreement(a: list[EditRun], b: list[EditRun]) -> dict:
    """How close two loops' results are: final LoRA (max abs difference / max abs value), answers, scores."""
    rel, same, total = 0.0, 0, 0
    for x, y in zip(a, b):
        scale = max(float(v.abs().max()) for v in x.lora.values()) or 1.0
        diff = max(float((x.lora[k].float() - y.lora[k].float()).abs().max()) for k in x.lora)
        rel = max(rel, diff / scale)
        same += sum(p == q for p, q in zip(x.answers, y.answers))
        total += len(x.answers)
    return {"lora_max_rel_diff": rel, "answers_identical": same, "answers": total,
            "score_a": _mean(r.score for r in a), "score_b": _mean(r.score for r in b)}


def _fmt_s(v: dict) -> str:
    if v["max"] == 0:
        return "—"

    def f(x):
        return f"{x:.3g}" if x >= 0.001 else ("0" if x == 0 else f"{x:.1e}")

    return f"{f(v['median'])} [{f(v['min'])}–{f(v['max'])}]"


def _fmt_ratio(v: dict | None) -> str:
    return "—" if v is None else f"{v['median']:.1f}x [{v['min']:.1f}–{v['max']:.1f}]"


def render(report: dict) -> str:
    s = report["summary"]
    loops = [name for name in LOOPS if name in s["seconds"]]
    cfg = report["config"]
    padded_to = cfg["max_length"] if cfg["reference_padding"] == "max_length" else "the longest in its batch"
    lines = [
        f"### {cfg['model']} ({cfg['arch']}, {cfg['linear_params'] / 1e6:.4g}M linear params), {cfg['dtype']} on "
        f"{report['device']['name']}",
        "",
        f"{cfg['edits']} self-edits ({cfg['data']}), {cfg['repeats']} repeats; LoRA r={cfg['rank']} "
        f"alpha={cfg['alpha']} on {','.join(cfg['targets'])}, {cfg['epochs']} epochs, lr {cfg['lr']:g} "
        f"({cfg['scheduler']}), batch {cfg['batch_size']}; greedy answers of up to {cfg['max_new_tokens']} tokens; "
        f"reference pads to {padded_to}; batched group {cfg['group'] or '—'}; tokenizer {cfg['tokenizer']}; "
        f"attention {cfg['attn']}.",
        "Seconds per evaluated self-edit, median [min–max] over repeats; ratio = reference / loop, paired per repeat.",
        "",
    ]
    head = ["phase"]
    names = {"reference": "reference", "seal-tt": "seal-tt", "batched": f"seal-tt batched ×{cfg['group']}"}
    for name in loops:
        head.append(f"{names[name]} s/edit")
        if name != "reference" and "reference" in loops:
            head.append("ratio")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for k in (*PHASES, "total"):
        row = [PHASE_LABELS[k]]
        for name in loops:
            row.append(_fmt_s(s["seconds"][name][k]))
            if name != "reference" and "reference" in loops:
                row.append(_fmt_ratio(s["ratios"][name][k]))
        lines.append("| " + " | ".join(row) + " |")
    row = ["self-edits per device-hour"]
    for name in loops:
        row.append(f"{3600 / s['seconds'][name]['total']['median']:,.0f}")
        if name != "reference" and "reference" in loops:
            row.append("")
    lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if "batched_vs_seal-tt" in s["ratios"]:
        r = s["ratios"]["batched_vs_seal-tt"]
        lines.append(f"- batched vs one-by-one seal-tt (seal-tt / batched): training {_fmt_ratio(r['train'])}, answer "
                     f"generation {_fmt_ratio(r['generate'])}, total {_fmt_ratio(r['total'])}")
    for key, label in (("seal-tt_vs_reference", "seal-tt vs reference"), ("batched_vs_seal-tt", "batched vs seal-tt")):
        ag = report["agreement"].get(key)
        if ag:
            lines.append(
                f"- {label}: final LoRA max rel. diff {ag['lora_max_rel_diff']:.1e}; answers identical "
                f"{ag['answers_identical']}/{ag['answers']}; mean token-F1 {ag['score_b']:.3f} vs {ag['score_a']:.3f}"
            )
    dev = report["device"]
    lines.append(
        f"- device: {dev['name']}; measured matmul {dev['matmul_flops'] / 1e12:.3g} TFLOP/s ({cfg['dtype']}), "
        f"copy bandwidth {dev['bandwidth'] / 1e9:.3g} GB/s"
    )
    for name, fl in report["floor"].items():
        measured = s["seconds"][name]["total"]["median"]
        lines.append(
            f"- floor, {names[name]}: {fl['train_tokens']:.0f} training tokens and {fl['new_tokens']:.0f} needed "
            f"answer tokens per edit = {fl['train_flops'] / 1e12:.3g} + {fl['generate_flops'] / 1e12:.3g} TFLOP; "
            f"compute floor {fl['compute_floor_s']:.3g} s, weight-read floor {fl['memory_floor_s']:.3g} s, "
            f"floor {fl['floor_s']:.3g} s; measured {measured:.3g} s = {measured / fl['floor_s']:.0f}x the floor"
        )
    if dev.get("peak_memory"):
        lines.append("- peak device memory: " + ", ".join(f"{names[k]} {v / 2**30:.1f} GiB"
                                                          for k, v in dev["peak_memory"].items()))
    lines.append(f"- paper: ~{PAPER_SECONDS_PER_EDIT:.0f} s wall per self-edit (Qwen2.5-7B, 2 H100s, vLLM server)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="tiny",
                   help="a named shape (tiny, llama-3.2-1b, llama-3.2-3b, qwen2.5-1.5b, qwen2.5-7b: random weights "
                        "built on the device) or a local model folder")
    p.add_argument("--shape", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a shape field, e.g. --shape num_hidden_layers=4 (repeatable)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bf16 on GPU, float32 on CPU")
    p.add_argument("--attn", default=None, help="attn_implementation: sdpa (transformers' default) | eager | "
                                                "flash_attention_2")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU intra-op threads (default 1: tiny models are overhead-bound, and on a shared machine "
                        "more threads mostly spin); 0 keeps torch's default")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="SEAL synthetic-data JSON with completions (default: the shared base_val.json, else its first "
                        "8 passages bundled in benchmarks/data), or 'embedded'")
    p.add_argument("--tokenizer", default="auto",
                   help="for named shapes: 'tiny' (the 640-id test tokenizer, ~3.7 tokens per word; its size is the "
                        "tiny shape's vocabulary), the bundled 8k SQuAD BPE 'squad8k' (~1.5 tokens per word, near "
                        "real tokenizers' ~1.3), or a tokenizer folder / json file; auto: tiny for the tiny shape, "
                        "squad8k for the real shapes (whose vocabulary is their own whatever the tokenizer)")
    p.add_argument("--docs", type=int, default=3, help="passages (the first ones of --data)")
    p.add_argument("--per-doc", type=int, default=1, help="self-edits (completions) per passage")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--alpha", type=int, default=64)
    p.add_argument("--targets", default="q_proj,v_proj")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--scheduler", default="linear", choices=["constant", "linear", "cosine"],
                   help="linear: the HF Trainer default the paper ran with")
    p.add_argument("--max-length", type=int, default=2048, help="the reference pads every sequence to this")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=64, help="answer prompts per generate call (all loops)")
    p.add_argument("--group", type=int, default=None,
                   help="self-edits trained together in the batched loop (default: all; 0: skip that loop)")
    p.add_argument("--max-pass-tokens", type=int, default=None,
                   help="batched loop: cap on padded tokens per forward/backward pass (a memory guard)")
    p.add_argument("--reference-padding", default="max_length", choices=["max_length", "longest"],
                   help="max_length: every sequence padded to --max-length, as the paper; longest: an ablation "
                        "that keeps the reference's machinery but pads only within a batch")
    p.add_argument("--no-reference", action="store_true", help="skip the reference loop (and the second model copy)")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--probe-seconds", type=float, default=1.0, help="time spent measuring the matmul rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the full report here")
    return p.parse_args(argv)


def _shape_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def build(args):
    """(model, tokenizer, arch label) on the requested device and dtype."""
    from core.models import load_causal_lm, load_tokenizer
    from core.shapes import SHAPES, build_shape

    if args.model.lower() in SHAPES:
        if args.tokenizer == "auto":
            args.tokenizer = "tiny" if args.model.lower() == "tiny" else "squad8k"
        if args.tokenizer == "squad8k":
            args.tokenizer = str(DEFAULT_TOKENIZER)
        model, tokenizer, shape = build_shape(args.model, device=args.device, dtype=args.dtype, seed=args.seed,
                                              attn_implementation=args.attn, tokenizer=args.tokenizer,
                                              **_shape_overrides(args.shape))
        return model, tokenizer, shape.arch
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, dtype=args.dtype, device=args.device, attn_implementation=args.attn)
    return model.eval(), tokenizer, model.config.model_type


def run(args, command: str = "") -> dict:
    import torch

    from core.config import EvalSettings, LoraSettings, ModelSettings, TrainSettings
    from pipeline.tasks.knowledge import Grader
    from student.engine import StudentEngine
    from core.shapes import SHAPES, Dims

    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*label_names.*")
    warnings.filterwarnings("ignore", category=FutureWarning)

    edits, source = load_edits(args.data, args.docs, args.per_doc, args.seed)
    model, tokenizer, arch = build(args)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    try:
        dims = Dims.from_config(model.config)
    except AttributeError:  # a model folder of an architecture without Llama-style config names: no floor
        dims = None
    reference_base = None if args.no_reference else copy.deepcopy(model)

    lora = LoraSettings(r=args.rank, alpha=args.alpha, target_modules=[t for t in args.targets.split(",") if t])
    train = TrainSettings(learning_rate=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                          lr_scheduler=args.scheduler, max_length=args.max_length)
    evaluation = EvalSettings(max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size,
                              use_chat_template="never", metric="token_f1")
    grader = Grader(evaluation)
    clock = Clock(device)
    engine = StudentEngine(ModelSettings(path=f"{args.model} (in memory)"), lora, base_model=model,
                           tokenizer=tokenizer)
    group = len(edits) if args.group is None else args.group
    loops = {}
    workdir = Path(tempfile.mkdtemp(prefix="seal_tt_bench_"))
    try:
        if reference_base is not None:
            loops["reference"] = ReferenceLoop(reference_base, tokenizer, lora, train, evaluation, grader, clock,
                                               workdir, engine._newline_token_ids(), args.reference_padding)
        loops["seal-tt"] = SealTTLoop(engine, train, evaluation, grader, clock)
        if group:
            loops["batched"] = BatchedLoop(engine, train, evaluation, grader, clock, group=group,
                                           max_pass_tokens=args.max_pass_tokens)

        if not args.no_warmup:
            # First calls pay one-time costs (kernel selection, allocator growth, lazy imports) that a long run
            # amortises away; one short pass per loop keeps them out of the timings.
            short = TrainSettings(**{**asdict(train), "epochs": 1})
            for name, loop in loops.items():
                loop.run(edits[: (group if name == "batched" else 1)], train=short)

        repeats, peak = [], {}
        for r in range(args.repeats):
            # Alternate the order so that drift in machine load does not always land on the same loop.
            order = list(loops) if r % 2 == 0 else list(reversed(loops))
            rep = {}
            for name in order:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                rep[name] = loops[name].run(edits)
                if device.type == "cuda":
                    peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated(device))
            repeats.append(rep)
            totals = ", ".join(f"{n} {per_edit_phases(rep[n])['total']:.3g}s" for n in loops)
            print(f"repeat {r + 1}/{args.repeats}: {totals} per edit", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    matmul = probe_matmul(device, dtype, args.probe_seconds)
    bandwidth = probe_bandwidth(device, args.probe_seconds / 2)
    first = repeats[0]
    floors = {}
    for name in ("seal-tt", "batched"):
        if name in first and dims is not None:
            weight_bytes = dims.linear_params * torch.finfo(dtype).bits // 8
            runs = first[name]
            steps = _mean(r.train_steps for r in runs) if name == "seal-tt" else _batched_steps(runs, group)
            floors[name] = floor_per_edit(runs, dims, weight_bytes, matmul, bandwidth, steps)
    ag = {}
    if "reference" in first:
        ag["seal-tt_vs_reference"] = agreement(first["reference"], first["seal-tt"])
    if "batched" in first:
        ag["batched_vs_seal-tt"] = agreement(first["seal-tt"], first["batched"])

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "config": {
            "model": args.model, "arch": arch, "linear_params": dims.linear_params if dims else 0,
            "dtype": str(dtype).split(".")[-1],
            "edits": len(edits), "data": source if len(source) < 60 else "…/" + "/".join(Path(source).parts[-3:]),
            "repeats": args.repeats, "rank": args.rank, "alpha": args.alpha, "targets": lora.target_modules,
            "epochs": args.epochs, "lr": args.lr, "scheduler": args.scheduler, "batch_size": args.batch_size,
            "max_length": args.max_length, "max_new_tokens": args.max_new_tokens,
            "reference_padding": args.reference_padding,
            "eval_batch_size": args.eval_batch_size, "group": group, "threads": torch.get_num_threads(),
            "attn": model.config._attn_implementation,
            "tokenizer": f"{Path(args.tokenizer).name if args.model.lower() in SHAPES else args.model} "
                         f"({len(tokenizer)} ids)",
        },
        "device": {
            "name": _device_name(device), "matmul_flops": matmul, "bandwidth": bandwidth,
            "peak_memory": peak, "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
        },
        "summary": summarize(repeats),
        "agreement": ag,
        "floor": floors,
    }


def _batched_steps(runs: list[EditRun], group: int) -> float:
    """Optimizer steps per edit when `group` edits share each step: a group runs as long as its longest edit."""
    total = 0.0
    for start in range(0, len(runs), group):
        total += max(r.train_steps for r in runs[start : start + group])
    return total / len(runs)


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} " \
           f"thread{'s' if torch.get_num_threads() > 1 else ''})"


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    report = run(args, command=" ".join(["python benchmarks/inner_loop.py", *argv]))
    text = render(report)
    report["table"] = text
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
