"""The store's student in memory: the base model with the store's updates applied as its strategy applies them.

- merge, replay: every accepted update's LoRA folded into the base weights in order (at the scale the gate kept),
  the live LoRA at zero; the weights are what SEAL's continual recipe would have written as a merged checkpoint.
- joint: the latest update's adapter, live (it was trained on everything so far).
- library: one adapter per update, kept apart; a question goes to the adapter of the document the router picks.
"""

from __future__ import annotations

from pathlib import Path

from core.config import EvalSettings
from core.errors import UserError
from pipeline.documents import Question
from pipeline.store.router import LexicalRouter

STACKED = ("merge", "replay")


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
    """Answers and scores questions the way the store's student answers them."""

    def __init__(self, engine, strategy: str, eval_settings: EvalSettings):
        from pipeline.tasks.knowledge import DENSE_METRICS, Grader

        if eval_settings.metric in DENSE_METRICS:
            raise UserError(f"a store grades its probes by their answers; student.eval.metric={eval_settings.metric} "
                            "needs the model per question: use contains, token_f1 or exact_match")
        self.engine = engine
        self.strategy = strategy
        self.eval = eval_settings
        self.grader = Grader(eval_settings)
        self.library: dict[int, dict] = {}  # update number -> LoRA state (strategy=library)
        self.holder: dict[str, int] = {}  # document key -> update number of its adapter (library)
        self.router: LexicalRouter | None = None
        self.live: dict | None = None  # joint: the current adapter
        # B = 0: a LoRA that changes nothing (what the base alone, or a merged student, answers with)
        self.zero = {k: (v.zero_() if "lora_B" in k else v) for k, v in engine.adapter_state().items()}
        self.force = False  # load adapters recorded for another base (ask --force)

    # --------------------------------------------------------------------------------------------- loading
    def load(self, store, state: dict) -> None:
        """Apply the committed updates of `state` to a freshly loaded base."""
        accepted = [u for u in state["updates"] if u.get("accepted")]
        zero = self.zero

        def read(u):
            return read_state(self.engine, store.update_dir(u["number"]) / "adapter", force=self.force)

        if self.strategy in STACKED:
            for u in accepted:
                self.engine.fold_adapter_state(read(u), u.get("scale", 1.0))
        elif self.strategy == "joint":
            if accepted:
                u = accepted[-1]
                self.live = scaled(read(u), u.get("scale", 1.0))
        else:
            for u in accepted:
                self.library[u["number"]] = scaled(read(u), u.get("scale", 1.0))
            self.set_router(state, store)
        self.engine.load_adapter_state(self.live or zero)

    def set_router(self, state: dict, store, *, superseded=frozenset(), staged: dict[str, str] | None = None,
                   number: int | None = None) -> None:
        """Route over the current documents the library holds; `staged` (key -> text) adds an uncommitted update's
        documents under adapter `number`, and `superseded` leaves out the versions it replaces."""
        from pipeline.store.layout import active_documents

        texts, self.holder = {}, {}
        for key, entry in active_documents(state).items():
            if key not in superseded and entry.get("update") in self.library:
                doc = store.read_document(key)
                texts[key] = routing_text(doc["title"], doc["text"], doc.get("training_texts", []))
                self.holder[key] = entry["update"]
        for key, text in (staged or {}).items():
            texts[key], self.holder[key] = text, number
        self.router = LexicalRouter(texts)

    # --------------------------------------------------------------------------------------------- answers
    def _answer(self, questions: list[str]) -> list[str]:
        ev = self.eval
        return self.engine.answer(questions, qa_prompt=ev.qa_prompt, use_chat_template=ev.use_chat_template,
                                  max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, until=ev.answer_until)

    def route(self, question: str) -> tuple[str | None, int | None]:
        """(document key, update number) the question goes to (library); (None, None) for one-adapter students."""
        if self.strategy != "library" or self.router is None:
            return None, None
        key = self.router.route(question)
        return key, self.holder.get(key) if key is not None else None

    def answer(self, questions: list[str], adapters: list[int | None] | None = None) -> list[str]:
        """Greedy answers; for a library, each question with the adapter `adapters[i]` (None: the base alone)."""
        if self.strategy != "library":
            return self._answer(questions) if questions else []
        if adapters is None:
            adapters = [self.route(q)[1] for q in questions]
        out: list[str | None] = [None] * len(questions)
        for number in dict.fromkeys(adapters):
            idx = [i for i, a in enumerate(adapters) if a == number]
            self.engine.load_adapter_state(self.zero if number is None else self.library[number])
            for i, text in zip(idx, self._answer([questions[i] for i in idx])):
                out[i] = text
        self.engine.load_adapter_state(self.zero)
        return out

    def score(self, probes: list[tuple[str, Question]], *, oracle: bool = False) -> list[float]:
        """Per probe (document key, question): its score as the student answers now. `oracle`: a library answers
        with the adapter that really holds the probe's document, as a perfect router would."""
        if not probes:
            return []
        questions = [q.question for _, q in probes]
        adapters = None
        if self.strategy == "library" and oracle:
            adapters = [self.holder.get(key) for key, _ in probes]
        preds = self.answer(questions, adapters)
        primary, _ = self.grader(questions, preds, [list(q.answers) for _, q in probes])
        return [float(s) for s in primary]
