"""Write the benchmark's bundled inputs from the shared SEAL data, so that a machine without it runs the same inputs.

    python benchmarks/make_data.py [--shared ../shared/data/seal/general-knowledge/data]

- `data/base_val_head.json`: the first 8 passages of `synthetic_data/eval/base_val.json` (SQuAD v1.1 dev passages and
  questions, CC BY-SA 4.0; self-edits sampled by Qwen2.5-7B, released with the SEAL paper), keys trimmed to what the
  benchmark reads.
- `data/squad8k-tokenizer.json.gz`: a byte-level BPE tokenizer with 8,192 ids trained on the SQuAD dev contexts that
  are *not* among the 200 base_val passages. On the benchmark's passages and self-edits it spends ~1.5 tokens per
  word, close to the Qwen2.5 and Llama-3 tokenizers (~1.3), where the 640-id test tokenizer spends ~3.7; so sequence
  lengths, and what training and decoding cost, are near what a real tokenizer gives. Its ids are below every named
  shape's vocabulary size.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

HEAD = HERE / "data/base_val_head.json"
TOKENIZER = HERE / "data/squad8k-tokenizer.json.gz"
VOCAB = 8192


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", default=str(HERE.parents[1] / "shared/data/seal/general-knowledge/data"))
    args = p.parse_args(argv)
    root = Path(args.shared)
    base_val = json.loads((root / "synthetic_data/eval/base_val.json").read_text(encoding="utf-8"))
    head = [{k: r[k] for k in ("title", "context", "questions", "completions")} for r in base_val[:8]]
    HEAD.write_text(json.dumps(head, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    from core.tiny import train_tokenizer

    held_out = {r["context"] for r in base_val}
    squad = json.loads((root / "squad_val.json").read_text(encoding="utf-8"))
    corpus = "\n".join(r["context"] for r in squad if r["context"] not in held_out)
    tokenizer = train_tokenizer("qwen2", corpus, VOCAB)
    with gzip.open(TOKENIZER, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write(tokenizer.backend_tokenizer.to_str())
    print(f"wrote {HEAD} ({len(head)} passages) and {TOKENIZER} ({len(tokenizer)} ids)")


if __name__ == "__main__":
    main()
