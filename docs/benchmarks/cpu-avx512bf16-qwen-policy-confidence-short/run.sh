#!/usr/bin/env bash
# Issue 9, the categories whose answers are short or whose auto never drafts (translation, qa:
# 16-30 tokens; summarization, rag: long prompts, k = 0), again with 5 repeats instead of 3 to see
# through this VM's noise: target, k = 1, 2, auto, spec-auto. Commit as in results.md.
# Ran on the 2-core AMD EPYC VM with AVX-512 (avx512f, avx512_bf16, avx512_vnni); nothing else running.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-qwen-policy-confidence-short
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --dataset spec-bench --categories translation,summarization,qa,rag --limit 2 \
  --methods target,spec-model-k1,spec-model-k2,spec-model-auto,spec-auto \
  -n 96 --threads 2 --repeats 5 --out "$OUT" --overwrite
.venv/bin/python -m specdecode.bench.methods_policy "$OUT"
