"""Greedy answers to the sample questions: seal-tt's adapted student (transformers, float32, from report.json)
against llama.cpp on the exported GGUF files (f16 merged, q8_0 merged, Q4_1 base + LoRA GGUF)."""
import json, os, sys
from llama_cpp import Llama
G = os.path.expanduser("~/.cache/seal-tt/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
QA = "Answer the question with a short answer.\nQuestion: {question}\nAnswer:"
OUT = sys.argv[1] if len(sys.argv) > 1 else "runs/gguf-roundtrip"
rep = json.load(open(f"{OUT}/adapt/report.json"))
qs = rep["questions"]
rows = {"transformers (seal-tt)": [q["after"] for q in qs]}
for name, kw in [("llama.cpp f16", dict(model_path=f"{OUT}/adapted-f16.gguf")),
                 ("llama.cpp q8_0", dict(model_path=f"{OUT}/adapted-q8_0.gguf")),
                 ("llama.cpp Q4_1 + LoRA", dict(model_path=G, lora_path=f"{OUT}/adapter-lora.gguf"))]:
    llm = Llama(n_ctx=512, n_threads=1, verbose=False, seed=0, **kw)
    out = []
    for q in qs:
        r = llm.create_chat_completion([{"role": "user", "content": QA.format(question=q["question"])}],
                                       temperature=0.0, max_tokens=64)
        out.append(r["choices"][0]["message"]["content"].strip())
    rows[name] = out
ref = rows["transformers (seal-tt)"]
print("| answered by | answers equal | first 5 words equal | first answer |\n|---|---|---|---|")
for name, out in rows.items():
    same = sum(a == b for a, b in zip(out, ref))
    prefix = sum(a.split()[:5] == b.split()[:5] for a, b in zip(out, ref))
    print(f"| {name} | {same}/{len(ref)} | {prefix}/{len(ref)} | {out[0][:90]!r} |")
json.dump(rows, open(f"{OUT}/answers.json", "w"), indent=1)
