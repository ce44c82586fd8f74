"""`seal-tt ask`: answer questions with an adapted student, from a store, an adapt-student run folder or an adapter.

    from pipeline.ask import open_asker
    asker = open_asker(store="store/")            # or run="runs/adapt", or adapter="adapter/", student="model"
    asker.ask(["Where was the bridge built?"])    # [{"question", "answer", "adapter", "documents"}]

Every answer says which adapter gave it and which documents that adapter holds: in a library store or a
per-document run, a question is routed (lexically) to one adapter, and a wrong route is visible there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.config import EvalSettings, LoraSettings, ModelSettings
from core.errors import UserError


@dataclass
class Asker:
    student: object  # a StoreStudent
    describe: dict = field(default_factory=dict)  # adapter number (or None) -> (label, documents)

    def ask(self, questions: list[str]) -> list[dict]:
        if not questions:
            return []
        routes = [self.student.route(q)[1] for q in questions]  # all None but for a library
        answers = self.student.answer(questions, routes)
        out = []
        for q, a, r in zip(questions, answers, routes):
            label, docs = self.describe.get(r, ("the base model alone", []))
            out.append({"question": q, "answer": a, "adapter": label, "documents": docs})
        return out


def _lora_from(adapter_dir: Path) -> LoraSettings:
    from core.adapters import adapter_config

    cfg = adapter_config(adapter_dir)
    r, modules = cfg.get("r"), cfg.get("target_modules")
    if not isinstance(r, int) or r < 1 or not isinstance(modules, list) or not modules:
        raise UserError(f"{Path(adapter_dir) / 'adapter_config.json'} is not a LoRA config seal-tt reads "
                        "(it needs \"r\", a positive integer, and \"target_modules\", a list of module names)")
    return LoraSettings(r=r, alpha=int(cfg.get("lora_alpha", r)), dropout=0.0, target_modules=sorted(modules))


def _answering(ev: EvalSettings) -> EvalSettings:
    """Answering grades nothing: a dense metric (which needs the model per question) is set aside."""
    from dataclasses import replace

    from pipeline.tasks.knowledge import DENSE_METRICS

    return replace(ev, metric="contains") if ev.metric in DENSE_METRICS else ev


def _engine(model: ModelSettings, lora: LoraSettings):
    from student.engine import StudentEngine

    return StudentEngine(model, lora)


def open_store(path: str | Path, state=None, *, force: bool = False) -> Asker:
    """The store's student with `state` (a StoreState) applied (default: the committed state read now); `force`:
    load adapters recorded for another base than the store's student is now (with a warning)."""
    from pipeline.store.layout import Store
    from pipeline.store.strategies import strategy_named

    store = Store(path)
    manifest = store.manifest()
    state = store.state() if state is None else state
    fixed = manifest.settings
    model = ModelSettings(**fixed["student.model"])
    strategy = strategy_named(manifest.strategy)
    student = strategy.student(_engine(model, LoraSettings(**fixed["student.lora"])),
                               _answering(EvalSettings(**fixed["student.eval"])))
    student.force = force
    student.load(store, state)
    return Asker(student, store_describe(strategy, state))


def store_describe(strategy, state) -> dict:
    """Adapter number (None for one-adapter students) -> (label, document ids) for a store's committed `state`,
    as its strategy (a `pipeline.store.strategies.Strategy`) assembles the student."""
    return {s.number: (s.label, s.documents) for s in strategy.adapter_sets(state)}


def open_adapter(adapter: str | Path, student_model: str, eval_settings: EvalSettings | None = None, *,
                 force: bool = False, run: Path | None = None) -> Asker:
    from core.models import check_model_reference
    from pipeline.store.strategies import Joint
    from pipeline.store.student import read_state

    adapter = Path(adapter)
    check_model_reference(student_model, "student")
    lora = _lora_from(adapter)
    engine = _engine(ModelSettings(path=student_model), lora)
    st = Joint().student(engine, _answering(eval_settings or EvalSettings()))
    st.live = read_state(engine, adapter, force=force, run=run)
    engine.load_adapter_state(st.live)
    return Asker(st, {None: (str(adapter), [])})


def open_run(run: str | Path, *, force: bool = False) -> Asker:
    """An adapt-student run folder: its student, its eval settings, its adapter (or per-document adapters)."""
    import yaml

    from core.config import load_config
    from pipeline.settings import AdaptConfig
    from core.rundir import read_jsonl
    from pipeline.store.router import LexicalRouter
    from pipeline.store.strategies import Library
    from pipeline.store.student import read_state, routing_text

    run = Path(run)
    cfg_file, report_file = run / "config.yaml", run / "report.json"
    if not cfg_file.is_file() or not report_file.is_file():
        raise UserError(f"{run} is not a finished adapt-student run folder (config.yaml and report.json expected)")
    config: AdaptConfig = load_config(AdaptConfig, None, yaml.safe_load(cfg_file.read_text(encoding="utf-8")))
    report = json.loads(report_file.read_text(encoding="utf-8"))
    if report.get("task") != "knowledge":
        raise UserError(f"{run} is not a knowledge run; `ask` answers questions about documents")
    if report.get("mode", "joint") == "joint":
        asker = open_adapter(run / "adapter", config.student.model.path, config.student.eval, force=force, run=run)
        asker.describe = {None: (str(run / "adapter"), [d["id"] for d in report["per_document"]])}
        return asker
    ids = [d["id"] for d in report["per_document"]]
    titles = {d["id"]: d.get("title") or "" for d in report["per_document"]}
    folders = {d["id"]: _document_adapter(run, n, d) for n, d in enumerate(report["per_document"])}
    engine = _engine(config.student.model, config.student.lora)
    st = Library().student(engine, _answering(config.student.eval))
    texts: dict[str, list[str]] = {i: [] for i in ids}
    for rec in read_jsonl(run / "self_edits.jsonl"):
        texts.setdefault(rec["document"], []).extend(rec.get("training_texts", []))
    for n, i in enumerate(ids):
        st.library[n] = read_state(engine, folders[i], force=force, run=run)
    st.holder = {i: n for n, i in enumerate(ids)}
    # The run keeps no copy of its documents: routing reads the titles and the self-edits (which restate them).
    st.router = LexicalRouter({i: routing_text(titles[i], "", texts[i]) for i in ids})
    return Asker(st, {n: (str(folders[i]), [i]) for n, i in enumerate(ids)})


def _document_adapter(run: Path, position: int, entry: dict) -> Path:
    """The adapter folder adapt-student wrote for a report entry: the name it recorded there; in a run from before
    names were recorded, the one numbered by the document's position among all documents, which is the report's
    position unless a document failed, else the one folder named for this document."""
    from pipeline.absorb import adapter_name

    if entry.get("adapter"):
        return run / entry["adapter"]
    guess = run / "adapters" / adapter_name(position, entry["id"])
    if guess.is_dir():
        return guess
    suffix = adapter_name(0, entry["id"])[4:]  # "_<safe id>"
    found = [p for p in (run / "adapters").glob(f"*{suffix}") if p.name[:4].isdigit() and p.name[4:] == suffix]
    if len(found) == 1:
        return found[0]
    raise UserError(f"{run}: no adapter folder for document {entry['id']!r} under adapters/ (expected {guess.name})")


def open_asker(*, store=None, run=None, adapter=None, student=None, force: bool = False) -> Asker:
    given = [x for x in (store, run, adapter) if x]
    if len(given) != 1:
        raise UserError("ask: give exactly one of --store DIR, --run DIR or --adapter DIR (with --student MODEL)")
    if store:
        return open_store(store, force=force)
    if run:
        return open_run(run, force=force)
    if not student:
        raise UserError("ask --adapter needs --student MODEL (the base the adapter was trained on)")
    return open_adapter(adapter, student, force=force)


def read_questions(path: str | Path) -> list[str]:
    """A .txt file (one question a line) or a .jsonl/.json of {"question": ...} objects."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"questions file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{p} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    if p.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{p} is not valid JSON ({err.msg}, line {err.lineno})") from None
        if not isinstance(rows, list):
            raise UserError(f"{p}: expected a JSON list of {{\"question\": ...}} objects, got a {type(rows).__name__}")
    elif p.suffix.lower() == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UserError(f"{p}: line {i} is not valid JSON ({err.msg})") from None
    else:
        return [line.strip() for line in text.splitlines() if line.strip()]
    if not all(isinstance(r, dict) and isinstance(r.get("question"), str) for r in rows):
        raise UserError(f"{p}: every item needs a \"question\" string")
    return [r["question"] for r in rows]
