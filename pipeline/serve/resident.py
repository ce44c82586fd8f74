"""The one student a server holds in memory, and the committed store state it answers from.

A store changes only by whole committed updates: `state.json` is replaced in one rename after the update's folder is
in place (pipeline/store/layout.py). So the committed state is identified by that file's inode, mtime and size; a
failed or rejected update either leaves it alone or commits weights that do not change (a rejected update is not
applied). `refresh` reloads only between answers, on the worker thread that owns the model, so an answer is never
computed on half-applied weights, and the one resident model is changed in place, never copied:

- merge, replay: the new updates' LoRAs are folded into the weights, in order, exactly as a fresh load folds them
  (the same additions in the same order, so the weights are the same, bit for bit);
- joint: the latest adapter replaces the live one; library: the adapters and the router are read again.

A store whose history no longer extends what is loaded (the folder was replaced by another store) is loaded anew.
"""

from __future__ import annotations

import gc
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from core.errors import UserError


def state_signature(store_path: Path):
    """What identifies the committed state now: cheap (one stat), safe to call from the event loop."""
    try:
        st = os.stat(Path(store_path) / "state.json")
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read_committed(store) -> tuple[object, object]:
    """The committed state and its signature, read so that the two belong together."""
    for _ in range(10):
        before = state_signature(store.path)
        state = store.state()
        if state_signature(store.path) == before:
            return state, before
    raise UserError(f"{store.path}: state.json kept changing while it was read")


def _accepted(state) -> list:
    return state.accepted()


def _identity(u) -> tuple:
    """What tells one committed update from another store's update of the same number: the document versions it
    absorbed (content hashes), when it finished, the scale it was kept at."""
    return u.number, u.scale, tuple(u.documents), u.finished


class Resident:
    """A store's, a run folder's or an adapter's student, and what each answer says about its source."""

    def __init__(self, *, store=None, run=None, adapter=None, student=None, model_name: str | None = None):
        from pipeline.ask import open_asker

        given = [x for x in (store, run, adapter) if x]
        if len(given) != 1:
            raise UserError("serve: give exactly one of --store DIR, --run DIR or --adapter DIR (with --student MODEL)")
        self.kind = "store" if store else "run" if run else "adapter"
        source = Path(given[0]).expanduser()
        self.model_id = model_name or (source.resolve().parent.name if source.name == "adapter" and adapter
                                       else source.resolve().name)
        self.loaded_sig, self.past, self.failed = None, set(), None
        self.state = None  # the StoreState loaded
        if store:
            from pipeline.store.layout import Store

            self.store = Store(store)
            self.manifest = self.store.manifest()
            self._open()
        else:
            self.store = None
            self.asker = open_asker(run=run, adapter=adapter, student=student)

    # -------------------------------------------------------------------------------------------- loading
    def _open(self) -> None:
        from pipeline.ask import open_store

        state, sig = read_committed(self.store)
        self.asker = open_store(self.store.path, state)
        self.state, self.loaded_sig = state, sig

    @property
    def student(self):
        return self.asker.student

    @property
    def tokenizer(self):
        return self.student.engine.tokenizer

    @property
    def model(self):
        return self.student.engine.model

    def committed(self):
        """The committed state's signature now (None for a run folder or an adapter, which never change)."""
        return state_signature(self.store.path) if self.store is not None else None

    def refresh(self, seen) -> None:
        """Load the committed state if `seen` (the state when the request arrived) is newer than what is loaded.

        A request that arrived before a commit is answered on the state it arrived under; the first one after it
        brings the new state in. A state that cannot be read keeps the old one serving (and is said once)."""
        if self.asker is not None and (self.store is None or seen is None or seen == self.loaded_sig
                                       or seen in self.past or seen == self.failed):
            return
        try:
            state, sig = read_committed(self.store)
            if self.asker is None:
                self._reopen(state)
            elif sig == self.loaded_sig:
                self.past.add(seen)  # a state that came and went before this request was served
                return
            else:
                self._apply(state)
        except (UserError, OSError, ValueError, KeyError) as err:
            self.failed = seen
            still = f"still answering from update {self.update}" if self.asker is not None else "no student is loaded"
            print(f"serve: the store's new state could not be loaded ({err}); {still}", file=sys.stderr, flush=True)
            return
        self.past.add(self.loaded_sig)
        self.state, self.loaded_sig = state, sig

    def _apply(self, state) -> None:
        from pipeline.ask import store_describe

        student, old = self.student, _accepted(self.state)
        new = _accepted(state)
        same_store = self.store.manifest().created == self.manifest.created
        if not (same_store and [_identity(u) for u in new[:len(old)]] == [_identity(u) for u in old]):
            self._reopen(state)
            return
        # The strategy brings the loaded student to the new state: merge and replay fold the new updates into the
        # weights in place; the others build a fresh holder on the same engine, which reads everything before it
        # touches the live LoRA.
        self.asker.student = student.strategy.refresh(student, self.store, state, new[len(old):])
        self.asker.describe = store_describe(student.strategy, state)

    def _reopen(self, state: dict) -> None:
        from pipeline.ask import open_store

        # One resident model: the old one is released before the new one loads (if that load fails, requests are
        # refused with a 503 and each next one tries again).
        self.asker = None
        gc.collect()
        _empty_cuda_cache()
        self.manifest = self.store.manifest()
        self.asker = open_store(self.store.path, state)

    # -------------------------------------------------------------------------------------------- answering
    @property
    def update(self) -> int | None:
        accepted = _accepted(self.state) if self.state is not None else []
        return accepted[-1].number if accepted else (0 if self.store is not None else None)

    @contextmanager
    def answering(self, question: str):
        """The model set up to answer `question` (a library's routed adapter made live), and the tag that says
        what answers: {"fingerprint": str, "seal_tt": {...}}."""
        student = self.student
        number = student.route(question)[1]  # None but for a routed student (a library)
        label, docs = self.asker.describe.get(number, ("the base model alone", []))
        tag = {"kind": self.kind, "update": self.update, "strategy": student.strategy.name, "adapter": label,
               "documents": docs}
        if self.store is not None:
            fingerprint = f"seal-tt-store-u{self.update}" + (f"-a{number}" if number is not None else "")
        else:
            fingerprint = f"seal-tt-{self.kind}" + (f"-a{number}" if number is not None else "")
        with student.answering_with(number):
            yield {"fingerprint": fingerprint, "seal_tt": tag}


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
