"""The store's student in memory: the base model with the store's updates applied as its strategy applies them
(`pipeline.store.strategies` says how: merge and replay fold every accepted update into the weights, joint keeps the
latest adapter live, a library keeps one adapter per update and routes each question to one of them)."""

from __future__ import annotations

from pathlib import Path

from core.config import EvalSettings
from core.errors import UserError
from pipeline.documents import Question
from pipeline.store.router import LexicalRouter


def scaled(state: dict, scale: float) -> dict:
    """A LoRA's tensors with its update scaled by `scale` (B carries it: B A x)."""
    if scale == 1.0:
        return state
    return {k: (v * scale if "lora_B" in k else v) for k, v in state.items()}


def routing_text(title: str, text: str, training_texts: list[str]) -> str:
    """What the router matches a question against: a document with its self-edits."""
    return "\n".join([title, text, *training_texts])


def read_state(engine, adapter_dir: Path, *, force: bool = False, run: Path | None = None) -> dict:
    """An adapter's tensors for `engine`'s student; one recorded for another base is refused unless `force`."""
    return engine.read_adapter(adapter_dir, force=force, run=run)


class StoreStudent:
    """Answers and scores questions the way the store's student answers them; `strategy` (a
    `pipeline.store.strategies.Strategy`) says how the committed updates make it and which adapter answers."""

    def __init__(self, engine, strategy, eval_settings: EvalSettings):
        from pipeline.tasks.knowledge import DENSE_METRICS, Grader

        if eval_settings.metric in DENSE_METRICS:
            raise UserError(f"a store grades its probes by their answers; student.eval.metric={eval_settings.metric} "
                            "needs the model per question: use contains, token_f1 or exact_match")
        self.engine = engine
        self.strategy = strategy
        self.eval = eval_settings
        self.grader = Grader(eval_settings, engine=engine)
        self.library: dict[int, dict] = {}  # update number -> LoRA state (a routed strategy: library)
        self.holder: dict[str, int] = {}  # document key -> update number of its adapter (library)
        self.router: LexicalRouter | None = None
        self.live: dict | None = None  # joint: the current adapter
        self.base_weights: dict | None = None  # merge, replay: the weights before the update in progress is folded
        # B = 0: a LoRA that changes nothing (what the base alone, or a merged student, answers with)
        self.zero = {k: (v.zero_() if "lora_B" in k else v) for k, v in engine.adapter_state().items()}
        self.force = False  # load adapters recorded for another base (ask --force)

    # --------------------------------------------------------------------------------------------- loading
    def read(self, store, u) -> dict:
        """The LoRA of committed update `u` (an UpdateEntry), as stored (its scale not applied)."""
        return read_state(self.engine, store.update_dir(u.number) / "adapter", force=self.force)

    def load(self, store, state) -> None:
        """Apply the committed updates of `state` (a StoreState) to a freshly loaded base."""
        self.strategy.assemble(self, store, state)
        self.engine.load_adapter_state(self.live or self.zero)

    def set_router(self, state, store, *, superseded=frozenset(), staged: dict[str, str] | None = None,
                   number: int | None = None) -> None:
        """Route over the current documents the library holds; `staged` (key -> text) adds an uncommitted update's
        documents under adapter `number`, and `superseded` leaves out the versions it replaces."""
        texts, self.holder = {}, {}
        for key, version in state.active().items():
            if key not in superseded and version.update in self.library:
                doc = store.read_document(key)
                texts[key] = routing_text(doc.title, doc.text, doc.training_texts)
                self.holder[key] = version.update
        for key, text in (staged or {}).items():
            texts[key], self.holder[key] = text, number
        self.router = LexicalRouter(texts)

    # --------------------------------------------------------------------------------------------- answers
    def plain_answer(self, questions: list[str]) -> list[str]:
        """Greedy answers with the weights and the LoRA live now."""
        if not questions:
            return []
        ev = self.eval
        return self.engine.answer(questions, qa_prompt=ev.qa_prompt, use_chat_template=ev.use_chat_template,
                                  max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, until=ev.answer_until)

    def route(self, question: str) -> tuple[str | None, int | None]:
        """(document key, update number) the question goes to (library); (None, None) for one-adapter students."""
        return self.strategy.route(self, question)

    def answer(self, questions: list[str], adapters: list[int | None] | None = None) -> list[str]:
        """Greedy answers; for a library, each question with the adapter `adapters[i]` (None: the base alone)."""
        return self.strategy.answer(self, questions, adapters)

    def answering_with(self, number: int | None):
        """A context in which the model answers as adapter `number` (what `route` picked) would."""
        return self.strategy.answering_with(self, number)

    def score(self, probes: list[tuple[str, Question]], *, oracle: bool = False) -> list[float]:
        """Per probe (document key, question): its score as the student answers now. `oracle`: a library answers
        with the adapter that really holds the probe's document, as a perfect router would."""
        if not probes:
            return []
        questions = [q.question for _, q in probes]
        adapters = self.strategy.oracle_adapters(self, [key for key, _ in probes]) if oracle else None
        preds = self.answer(questions, adapters)
        primary, _ = self.grader(questions, preds, [list(q.answers) for _, q in probes])
        return [float(s) for s in primary]
