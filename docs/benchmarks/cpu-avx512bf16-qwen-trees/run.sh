#!/usr/bin/env bash
# Token trees, first measurement: HumanEval (10 prompts), int4 target, prompt lookup as a chain
# vs as a tree of 3 occurrences' continuations within the same k (the planner's), greedy, 96 tokens.
# CPU: see results.md (this run: AMD EPYC Zen 4, AVX-512 with bf16).
set -euo pipefail
cd "$(dirname "$0")/../../.."
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --methods target-int4,spec-int4-ngram,spec-int4-ngram-tree \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out docs/benchmarks/cpu-avx512bf16-qwen-trees "$@"
