"""Which of the paper's SQuAD passages each study may use: selection, warm start, ReST-EM, evaluation.

The committed split file `benchmarks/splits/squad_passages.json` names every passage by pool and index and carries
the sha256 of its text; `tests/test_squad_split.py` checks that the uses are disjoint (by text, not by index) and that
the file still matches the data. Pools (the paper's files under `general-knowledge/data/synthetic_data/`):

    alt0    train/alternate_prompts/iter0_train_prompt-*.json   50 training passages; Qwen2.5-7B base completions
            in the forms rewrite, long, very-long, self-qa, none
    alt1    train/alternate_prompts/iter1_train_prompt-*.json   50 other training passages (= train/iter1_train.json);
            completions after one RL round per form
    train0  train/iter0_train.json                               100 training passages; base implications
            (index 19 is alt0's 48)
    eval    eval/base_val.json                                   the 200 evaluation passages

    python benchmarks/squad_split.py write    # (re)write the split file from the rule below
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYN = ROOT.parent / "shared/data/seal/general-knowledge/data/synthetic_data"
SPLIT_FILE = ROOT / "benchmarks/splits/squad_passages.json"

POOLS = {
    "alt0": "train/alternate_prompts/iter0_train_prompt-rewrite.json",
    "alt1": "train/alternate_prompts/iter1_train_prompt-rewrite.json",
    "train0": "train/iter0_train.json",
    "eval": "eval/base_val.json",
}
# The rule, fixed before any result was seen: forms are compared on alt0 0-31 (implications, which alt0 lacks, on
# train0 0-31); the warm start learns from the rest of alt0 and from alt1; ReST-EM trains on the rest of train0;
# every evaluation passage is kept out of all of them (the tables use 0-47).
RULE = {
    "selection": [("alt0", range(0, 32)), ("train0", range(0, 32))],
    "warm_start": [("alt0", range(32, 50)), ("alt1", range(0, 50))],
    "rest_em": [("train0", range(32, 100))],
    "evaluation": [("eval", range(0, 200))],
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pool(name: str) -> list[dict]:
    return json.loads((SYN / POOLS[name]).read_text(encoding="utf-8"))


def build() -> dict:
    data = {name: pool(name) for name in POOLS}
    seen: dict[str, str] = {}
    out: dict = {"pools": POOLS, "uses": {}}
    for use, parts in RULE.items():
        entries = []
        for name, indices in parts:
            for i in indices:
                h = sha(data[name][i]["context"])
                if h in seen:  # the same text in two pools (train0 19 = alt0 48): the first use keeps it
                    continue
                seen[h] = use
                entries.append({"pool": name, "index": i, "sha256": h, "title": data[name][i]["title"]})
        out["uses"][use] = entries
    return out


def load() -> dict:
    return json.loads(SPLIT_FILE.read_text(encoding="utf-8"))


def indices(use: str, pool_name: str) -> list[int]:
    """The indices of `pool_name` that the split gives to `use`, in order."""
    return [e["index"] for e in load()["uses"][use] if e["pool"] == pool_name]


def main(argv: list[str]) -> None:
    if argv[:1] != ["write"]:
        raise SystemExit(__doc__)
    SPLIT_FILE.parent.mkdir(parents=True, exist_ok=True)
    SPLIT_FILE.write_text(json.dumps(build(), indent=1) + "\n", encoding="utf-8")
    split = load()
    print({use: len(v) for use, v in split["uses"].items()})


if __name__ == "__main__":
    main(sys.argv[1:])
