"""Which string grader agrees with a reader's verdicts on a chat student's whole replies?

    python benchmarks/grader_check.py sample --run runs/recipe_forms      # writes benchmarks/grader_check/
    (a reader labels to_label.jsonl by RULE.md, blind to conditions and grader verdicts: labels.jsonl)
    python benchmarks/grader_check.py score                               # agreement table -> summary.md

`sample` draws a uniform sample of 200 (question, gold, reply) triples from the benchmark's records across every
condition (the open-book ceiling included), and up to 100 more among the triples on which two graders disagree;
the two sets are shuffled together so a reader cannot tell them apart. Agreement (accuracy, Cohen's kappa) is
reported on the uniform 200 — the disagreement set only shows where graders fail.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

OUT = ROOT / "benchmarks/grader_check"
UNIFORM, DISAGREE = 200, 100


def verdicts(question: str, gold: list[str], reply: str) -> dict[str, bool]:
    """Each candidate grader's verdict (right: True) on one reply."""
    from pipeline.rewards import get_reward

    out = {}
    for name in ("contains", "exact_match", "contains_numeric"):
        out[name] = get_reward(name)([reply], [gold])[0] >= 0.5
    out["token_f1>=0.5"] = get_reward("token_f1")([reply], [gold])[0] >= 0.5
    return out


def cmd_sample(args) -> None:
    from recipe_report import load

    records = load([Path(r) for r in args.run])
    items = [{"key": r["key"], "q": i, "question": q["q"], "gold": q["gold"], "reply": q["pred"]}
             for r in records for i, q in enumerate(r["questions"])]
    rng = random.Random(0)
    uniform = rng.sample(items, min(UNIFORM, len(items)))
    taken = {(x["key"], x["q"]) for x in uniform}
    split = [x for x in items if (x["key"], x["q"]) not in taken
             and len(set(verdicts(x["question"], x["gold"], x["reply"]).values())) > 1]
    disagree = rng.sample(split, min(DISAGREE, len(split)))
    both = [("uniform", x) for x in uniform] + [("disagreement", x) for x in disagree]
    rng.shuffle(both)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "items.jsonl", "w", encoding="utf-8") as f, open(OUT / "to_label.jsonl", "w", encoding="utf-8") as g:
        for n, (kind, x) in enumerate(both):
            f.write(json.dumps({"id": n, "set": kind, "key": x["key"], "q": x["q"]}) + "\n")
            g.write(json.dumps({"id": n, "question": x["question"], "gold": x["gold"], "reply": x["reply"]},
                               ensure_ascii=False) + "\n")
    print(f"{len(uniform)} uniform + {len(disagree)} disagreement triples (of {len(items)}; {len(split)} disagree)")


def kappa(a: list[bool], b: list[bool]) -> float:
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    return (po - pe) / (1 - pe) if pe < 1 else 1.0


def cmd_score(args) -> None:
    items = [json.loads(x) for x in (OUT / "items.jsonl").read_text().splitlines()]
    texts = {x["id"]: x for x in map(json.loads, (OUT / "to_label.jsonl").read_text().splitlines())}
    labels = {x["id"]: x["label"] == "right" for x in map(json.loads, (OUT / "labels.jsonl").read_text().splitlines())}
    lines = ["| grader | set | triples | accuracy | Cohen's kappa | right by grader | right by reader |",
             "|---|---|---|---|---|---|---|"]
    table = {}
    for kind in ("uniform", "disagreement"):
        ids = [x["id"] for x in items if x["set"] == kind and x["id"] in labels]
        if not ids:
            continue
        truth = [labels[i] for i in ids]
        per = {i: verdicts(texts[i]["question"], texts[i]["gold"], texts[i]["reply"]) for i in ids}
        for name in per[ids[0]]:
            pred = [per[i][name] for i in ids]
            acc = sum(p == t for p, t in zip(pred, truth)) / len(ids)
            k = kappa(pred, truth)
            table[f"{kind}/{name}"] = {"accuracy": acc, "kappa": k, "n": len(ids)}
            lines.append(f"| {name} | {kind} | {len(ids)} | {acc:.3f} | {k:.3f} | {sum(pred)} | {sum(truth)} |")
    text = "\n".join(lines)
    print(text)
    (OUT / "summary.md").write_text(text + "\n", encoding="utf-8")
    (OUT / "agreement.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--run", nargs="+", required=True)
    s.set_defaults(fn=cmd_sample)
    c = sub.add_parser("score")
    c.set_defaults(fn=cmd_score)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
