"""Which contexts ReST-EM holds out and which each round trains on, for any task (knowledge documents, ARC tasks)."""

from __future__ import annotations

import random

from core.errors import UserError
from pipeline.settings import DataSettings


def split_contexts(pool: list, heldout: list | None, data: DataSettings, rounds: int, key) -> tuple[list[list], list]:
    """Held-out contexts first (never trained on), then each round's training contexts."""
    pool = list(pool)
    random.Random(data.shuffle_seed).shuffle(pool)
    if heldout is None:
        heldout, pool = pool[: data.heldout_contexts], pool[data.heldout_contexts:]
    else:
        held_ids = {key(c) for c in heldout}
        pool = [c for c in pool if key(c) not in held_ids]
        heldout = heldout[: data.heldout_contexts]
    n = data.contexts_per_round
    need = 0 if rounds == 0 else n * rounds if data.fresh_per_round else n
    if n < 1:
        raise UserError("data.contexts_per_round must be at least 1")
    if len(pool) < need:
        raise UserError(
            f"{rounds} rounds x {n} fresh contexts need {need} training contexts, but only {len(pool)} remain "
            f"after holding out {len(heldout)}; lower data.contexts_per_round or set data.fresh_per_round=false"
        )
    if data.fresh_per_round:
        rounds = [pool[i * n:(i + 1) * n] for i in range(rounds)]
    else:
        rounds = [pool[:n] for _ in range(rounds)]
    if not heldout:
        raise UserError("no held-out contexts: set data.heldout_contexts >= 1 or give data.heldout_docs")
    return rounds, heldout
