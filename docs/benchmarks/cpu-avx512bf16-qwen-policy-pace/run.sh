#!/usr/bin/env bash
# The issue-9 benchmark with the costs following the engine's own passes (cost_pace.py, commit bb24252): Spec-Bench (6 categories) and HumanEval,
# k = 1, 2, 4, 8 and the cost policy, 3 repeats, in one run; then the theory table.
# Ran on the 2-core AMD EPYC VM with AVX-512 (avx512f, avx512_bf16, avx512_vnni); nothing else running.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-qwen-policy-pace
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --dataset spec-bench,humaneval --limit 2 \
  --methods target,spec-model-k1,spec-model-k2,spec-model-k4,spec-model-k8,spec-model-auto,spec-auto \
  -n 96 --threads 2 --repeats 3 --out "$OUT" --overwrite
.venv/bin/python -m specdecode.bench.methods_policy "$OUT"
