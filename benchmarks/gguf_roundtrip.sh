#!/usr/bin/env bash
# The documented GGUF round trip (docs/models.md), on SmolLM2-135M-Instruct from the package index: adapt from the
# Q4_1 file (the sample documents as given self-edits), export f16 / q8_0 / LoRA GGUF, then answer the sample
# questions in llama.cpp and compare with seal-tt's own answers (benchmarks/gguf_roundtrip_check.py).
# Needs the llamacpp extra:  pip install -c constraints-cpu.txt -e '.[llamacpp]'
#     bash benchmarks/gguf_roundtrip.sh        # from the repository root; writes runs/gguf-roundtrip/
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
S=${SEAL_TT:-seal-tt}
PY=${PYTHON:-python}
seal=$($S fetch-model smollm2-135m | tail -n 1)   # fetches the GGUF file once (cached)
G=~/.cache/seal-tt/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
test -f "$G" || { echo "no $G after fetch-model ($seal)"; exit 2; }
OUT=runs/gguf-roundtrip
mkdir -p $OUT
$PY -c "
import json
for l in open('pipeline/data/sample_docs.jsonl'):
    d = json.loads(l); print(json.dumps({'document': d['id'], 'completion': d['text']}))" > $OUT/edits.jsonl
$S adapt-student --docs pipeline/data/sample_docs.jsonl --edits $OUT/edits.jsonl --student $G \
    --output $OUT/adapt --set student.train.epochs=3 --set student.eval.metric=contains_numeric --quiet | tail -5
$S export-gguf $G $OUT/adapted-f16.gguf --adapter $OUT/adapt/adapter --force
$S export-gguf $G $OUT/adapted-q8_0.gguf --adapter $OUT/adapt/adapter --type q8_0 --force
$S export-gguf $G $OUT/adapter-lora.gguf --adapter $OUT/adapt/adapter --lora --force
ls -la $OUT/*.gguf
$PY benchmarks/gguf_roundtrip_check.py $OUT
