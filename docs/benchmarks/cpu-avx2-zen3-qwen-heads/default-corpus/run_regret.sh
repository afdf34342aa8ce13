#!/usr/bin/env bash
# After the planner's regret rule (a drafter held back by its growing catch-up is bought back by
# what the rounds without it forgo; policy/planner.py CATCH_UP_RENT): the same Spec-Bench prompts
# as run.sh (6 categories x 5, 96 tokens, greedy, 2 threads, AMD EPYC Zen 3, AVX2), the int4
# target alone, the head trained by run.sh, auto and llama.cpp, interleaved in one process.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
OUT=docs/benchmarks/cpu-avx2-zen3-qwen-heads/default-corpus
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-head,spec-int4-auto,llamacpp \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench-regret "$@"
