#!/usr/bin/env bash
# Tool calls: the tool-calls prompts (12 requests with 2-3 tools each and a required or named
# call), int4 target, with and without the grammar's free forced drafts, beside llama.cpp held to
# its own grammar (GBNF) of the same call; greedy, up to 128 new tokens, 2 threads.
# Then 60 requests (greedy + 4 seeds per prompt) checked: one call of an offered function whose
# arguments are valid for its parameters schema.
# CPU: see machine.md beside the results (this run: AMD EPYC Zen 4, AVX-512 with bf16).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-qwen-tools
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,target-int4-unforced,spec-int4-auto,spec-int4-auto-unforced,llamacpp \
  --dataset tool-calls -n 128 --threads 2 --out $OUT "$@"
.venv/bin/python scripts/schema_validity.py --dataset tool-calls --target qwen2.5-coder-1.5b \
  --draft qwen2.5-coder-0.5b --seeds 4 -n 128 --threads 2 | tee $OUT/validity.txt
