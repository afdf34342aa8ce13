#!/usr/bin/env bash
# Spec-Bench once more on the same Zen 4 with the final code of the session (commit dd95900: the
# planner's multi-token steering learns from adjacent pairs of passes): the int4 target, the draft
# model alone, auto, llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-zen4-qwen-stack
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-model-int4,spec-int4-auto,llamacpp \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench-pairs "$@"
