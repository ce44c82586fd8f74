"""Compare the records of two run folders (train-teacher, demo), timings and worker names aside.

    python benchmarks/compare_runs.py runs/demo-local runs/demo-ray

For every JSONL file under either folder: the two sets of records, each with its timing fields (`*seconds`,
`timings`, `worker`, ...) removed, must be equal as multisets (order aside: Ray finishes items in any order). Prints a
line per file and exits 1 on any difference. Used to check that the Ray executor gives the local executor's records.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ASIDE = {"timings", "worker", "workers", "time", "started", "finished"}


def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in ASIDE and not k.endswith("seconds")}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x


def records(path: Path) -> Counter:
    return Counter(json.dumps(strip(json.loads(line)), sort_keys=True)
                   for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def main(argv=None) -> int:
    a, b = (Path(p) for p in (argv or sys.argv[1:]))
    files = sorted({p.relative_to(a) for p in a.rglob("*.jsonl")} | {p.relative_to(b) for p in b.rglob("*.jsonl")})
    bad = 0
    for rel in files:
        ra = records(a / rel) if (a / rel).exists() else None
        rb = records(b / rel) if (b / rel).exists() else None
        same = ra == rb
        bad += not same
        n = sum((ra or rb or Counter()).values())
        print(f"{'equal ' if same else 'DIFFER'} {n:6d} records  {rel}")
    print(f"{len(files) - bad} of {len(files)} files equal")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
