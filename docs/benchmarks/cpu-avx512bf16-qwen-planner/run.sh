#!/usr/bin/env bash
# Issue 19's benchmark: the planner on Spec-Bench (6 categories x 5 prompts) and HumanEval (10),
# int4 target, beside llama.cpp, greedy, 96 new tokens, one process per dataset, 2 threads.
# CPU: see machine.md beside the results (this run: AMD EPYC Zen 4, AVX-512 with bf16).
set -euo pipefail
cd "$(dirname "$0")/../../.."
M=target-int4,spec-int4-ngram,spec-int4-model-int4,spec-int4-auto,llamacpp
OUT=docs/benchmarks/cpu-avx512bf16-qwen-planner
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $M \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $M \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
