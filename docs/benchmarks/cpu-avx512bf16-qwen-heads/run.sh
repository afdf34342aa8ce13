#!/usr/bin/env bash
# Draft heads (issue 22): the int4 target alone, with the int4 0.5B draft model, with the draft head
# trained for it, --drafter auto (n-gram + suffix + draft model + head), and llama.cpp on the GGUF
# as shipped, greedy, 96 tokens: Spec-Bench (6 categories x 5), then HumanEval (10 prompts).
# The head: `specdecode heads train` as in train.sh (the same directory). CPU: see results.md.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-qwen-heads
METHODS=target-int4,spec-int4-model-int4,spec-int4-head,spec-int4-auto,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
