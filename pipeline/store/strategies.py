"""The four ways a store keeps its student, one class each behind one interface: what an update trains, how the
student is assembled from the committed updates (in memory for an update, `ask` and `serve`; as adapters for
`export`), which adapter answers a question, what a changed document does, and what can be undone or removed.

- merge: an update trains on the new documents' self-edits alone and is folded into the weights, as SEAL's
  continual recipe merges each adapter before training the next; what it absorbed cannot be taken out again.
- replay: merge, with a sample of earlier documents' self-edit sequences trained beside the new ones.
- joint: one adapter retrained on the self-edits of every current document; a changed document's old version
  leaves it at the next update.
- library: one adapter per update, kept apart; a question goes to the adapter of the document a lexical router
  picks; an adapter that holds no current document is retired.

Nothing outside this module asks which strategy a store has: it asks the strategy.
"""

from __future__ import annotations

import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, ClassVar

from core.errors import UserError
from pipeline.store.state import StoreState, UpdateEntry, Version
from pipeline.store.student import StoreStudent, scaled


@dataclass
class AdapterSet:
    """Adapters that answer together: `number` picks it (None for a one-adapter student), `label` is what an answer
    says answered it, `updates` are the committed updates whose LoRAs it sums (each at its kept scale), and
    `documents` the ids of the current documents it holds."""

    number: int | None
    label: str
    updates: list[UpdateEntry]
    documents: list[str]


class Strategy:
    name: ClassVar[str] = ""
    routed: ClassVar[bool] = False  # several adapters, one per question (export writes them apart)
    mergeable: ClassVar[bool] = True  # the student is one set of weights (export --merged)

    def student(self, engine, eval_settings) -> StoreStudent:
        return StoreStudent(engine, self, eval_settings)

    # ------------------------------------------------------------------------------- what an update trains
    def training_set(self, new: list, earlier: Callable[[], list], replay, seed: int) -> tuple[list, int]:
        """The update's training sequences from the new documents' (`new`) and, when the strategy trains on them,
        the current earlier documents' (`earlier()`); and how many of them are earlier ones. A sequence is whatever
        the caller passes (the update: a (text, passage) pair), so that a passage travels with its text."""
        return list(new), 0

    # -------------------------------------------------------------------------- how the student is assembled
    def assemble(self, student: StoreStudent, store, state: StoreState) -> None:
        """Apply the committed updates to a freshly loaded base."""
        raise NotImplementedError

    def before_training(self, student: StoreStudent) -> None:
        """Called once the committed student is loaded, before the update trains."""

    def stage(self, student: StoreStudent, trained: dict, number: int, *, state: StoreState, store,
              superseded: set[str], staged: dict[str, str]) -> None:
        """Show the student the update's documents (`staged`: key -> routing text) before the gate tries it."""

    def apply(self, student: StoreStudent, trained: dict, scale: float, number: int) -> None:
        """Put the student in the state it will have once update `number` is committed at `scale`."""
        raise NotImplementedError

    def refresh(self, student: StoreStudent, store, state: StoreState, added: list[UpdateEntry]) -> StoreStudent:
        """The student with `added` (committed after what it holds) applied: read whole before anything changes."""
        fresh = StoreStudent(student.engine, self, student.eval)
        fresh.force = student.force
        fresh.load(store, state)
        return fresh

    def adapter_sets(self, state: StoreState) -> list[AdapterSet]:
        """What answers, as adapters: for `ask`'s and `serve`'s labels and for `export`."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------- which adapter answers
    def route(self, student: StoreStudent, question: str) -> tuple[str | None, int | None]:
        return None, None

    def answer(self, student: StoreStudent, questions: list[str], adapters: list[int | None] | None) -> list[str]:
        return student.plain_answer(questions)

    def answering_with(self, student: StoreStudent, number: int | None):
        return nullcontext()

    def oracle_adapters(self, student: StoreStudent, keys: list[str]) -> list[int | None] | None:
        return None

    def oracle_scores(self, student: StoreStudent, probes: list) -> list[float] | None:
        """Probe scores as a perfect router would answer them (None: one adapter answers everything)."""
        return None

    def drift(self, student: StoreStudent, measure: Callable[[], float]) -> float:
        """The drift from the base (`measure()` for the weights and LoRA live now)."""
        return measure()

    # ------------------------------------------------------ a changed document; what is undone or removed
    def on_changed(self, doc_id: str, old: Version) -> str | None:
        """What happens to the old version of a changed document (a note for the update's report)."""
        return None

    def retire(self, state: StoreState) -> list[str]:
        """Mark what the new state no longer needs; notes for the update's report."""
        return []


class _Stacked(Strategy):
    """Every accepted update folded into the base weights, in order, at the scale the gate kept; the LoRA at zero."""

    def assemble(self, student, store, state):
        for u in state.accepted():
            student.engine.fold_adapter_state(student.read(store, u), u.scale)

    def before_training(self, student):
        student.base_weights = student.engine.base_weights()

    def apply(self, student, trained, scale, number):
        engine = student.engine
        engine.restore_base_weights(student.base_weights)
        engine.fold_adapter_state(trained, scale)
        engine.load_adapter_state(student.zero)

    def refresh(self, student, store, state, added):
        # Every new adapter is read before any is folded: a file that fails to read leaves the weights as they were.
        loras = [(student.read(store, u), u.scale) for u in added]
        for lora, scale in loras:
            student.engine.fold_adapter_state(lora, scale)
        return student

    def adapter_sets(self, state):
        accepted = state.accepted()
        ids = [v.id for v in state.active().values()]
        return [AdapterSet(None, f"{len(accepted)} updates merged", accepted, ids)] if accepted else []

    def on_changed(self, doc_id, old):
        return (f"{self.name} cannot undo: the old version of {doc_id} (absorbed in update {old.update}) stays in "
                "the weights; its self-edits leave replay and its probes are no longer measured")


class Merge(_Stacked):
    name = "merge"


class Replay(_Stacked):
    name = "replay"

    def training_set(self, new, earlier, replay, seed):
        pool = earlier()
        want = int(round(replay.ratio * len(new)))
        if replay.max_sequences is not None:
            want = min(want, replay.max_sequences)
        sample = random.Random(seed).sample(pool, min(want, len(pool)))
        return list(new) + sample, len(sample)


class Joint(Strategy):
    name = "joint"

    def training_set(self, new, earlier, replay, seed):
        pool = earlier()
        return pool + list(new), len(pool)

    def assemble(self, student, store, state):
        accepted = state.accepted()
        if accepted:
            student.live = scaled(student.read(store, accepted[-1]), accepted[-1].scale)

    def apply(self, student, trained, scale, number):
        student.live = scaled(trained, scale)
        student.engine.load_adapter_state(student.live)

    def adapter_sets(self, state):
        accepted = state.accepted()
        if not accepted:
            return []
        last = accepted[-1]
        return [AdapterSet(None, f"one adapter trained on all (update {last.number})", [last],
                           [v.id for v in state.active().values()])]

    def on_changed(self, doc_id, old):
        return f"joint retrained without the old version of {doc_id}"


class Library(Strategy):
    name = "library"
    routed = True
    mergeable = False

    def assemble(self, student, store, state):
        for u in state.accepted():
            student.library[u.number] = scaled(student.read(store, u), u.scale)
        student.set_router(state, store)

    def stage(self, student, trained, number, *, state, store, superseded, staged):
        # The router sees the new documents through what this update staged.
        student.library[number] = trained
        student.set_router(state, store, superseded=superseded, number=number, staged=staged)

    def apply(self, student, trained, scale, number):
        student.library[number] = scaled(trained, scale)

    def adapter_sets(self, state):
        return [AdapterSet(u.number, f"update {u.number}", [u], state.holding(u.number)) for u in state.accepted()]

    def route(self, student, question):
        if student.router is None:
            return None, None
        key = student.router.route(question)
        return key, student.holder.get(key) if key is not None else None

    def answer(self, student, questions, adapters):
        if adapters is None:
            adapters = [self.route(student, q)[1] for q in questions]
        out: list[str | None] = [None] * len(questions)
        for number in dict.fromkeys(adapters):
            idx = [i for i, a in enumerate(adapters) if a == number]
            with self.answering_with(student, number):
                for i, text in zip(idx, student.plain_answer([questions[i] for i in idx])):
                    out[i] = text
        return out

    @contextmanager
    def answering_with(self, student, number):
        student.engine.load_adapter_state(student.zero if number is None else student.library[number])
        try:
            yield
        finally:
            student.engine.load_adapter_state(student.zero)

    def oracle_adapters(self, student, keys):
        return [student.holder.get(key) for key in keys]

    def oracle_scores(self, student, probes):
        return student.score(probes, oracle=True)

    def drift(self, student, measure):
        values = []
        for number in student.library:  # a library's drift: the mean over its adapters
            with self.answering_with(student, number):
                values.append(measure())
        return sum(values) / len(values) if values else 0.0

    def retire(self, state):
        notes = []
        holding = {v.update for v in state.active().values()}
        for u in state.updates:
            if u.accepted and u.number not in holding and not u.retired:
                u.retired = True
                notes.append(f"library: the adapter of update {u.number} holds no current document and is retired")
        return notes


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Merge(), Replay(), Library(), Joint())}


def strategy_named(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise UserError(f"unknown store strategy {name!r}: one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
