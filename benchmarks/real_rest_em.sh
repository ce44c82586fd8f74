#!/usr/bin/env bash
# One ReST-EM round with SmolLM2-135M-Instruct as teacher and student on the SEAL paper's RL training passages
# (synthetic_data/train/iter0_train.json, its first 92 of 100: the last 8 tune the inner loop in real_squad.py).
# Resumable: rerun the same command after a stop. Usage: bash benchmarks/real_rest_em.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-runs/rest_em_smollm2}"
BIN="${BIN:-.venv/bin}"
mkdir -p "$RUN"
DOCS="$RUN/iter0_train_first92.json"
[ -f "$DOCS" ] || "$BIN/python" -c "
import json, sys
src = '../shared/data/seal/general-knowledge/data/synthetic_data/train/iter0_train.json'
json.dump(json.load(open(src))[:92], open(sys.argv[1], 'w'))" "$DOCS"
M="$(HF_HUB_OFFLINE=1 "$BIN/seal-tt" fetch-model smollm2-135m | tail -n 1)"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 "$BIN/seal-tt" train-teacher \
    --config configs/knowledge_smollm2_cpu.yaml --docs "$DOCS" --teacher "$M" --student "$M" --output "$RUN/run"
