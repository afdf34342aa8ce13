#!/usr/bin/env bash
# Token trees: prompt lookup as a chain vs as a tree of 3 occurrences' continuations (the main
# branch the chain's k, alternatives on the rows the planner finds free), int4 target, greedy,
# 96 tokens: HumanEval (10 prompts), then Spec-Bench (6 categories x 5).
# CPU: see results.md (this run: AMD EPYC Zen 4, AVX-512 with bf16).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-qwen-trees
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --methods target-int4,spec-int4-ngram,spec-int4-ngram-tree \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --methods target-int4,spec-int4-ngram,spec-int4-ngram-tree \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
