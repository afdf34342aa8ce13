#!/usr/bin/env bash
# Structured output: the json-extract prompts (6 extractions, 6 tool-call argument sets, a JSON
# schema each), int4 target, with and without the grammar's free forced drafts, beside llama.cpp
# constrained by its own grammar of the same schema; greedy, up to 256 new tokens, 2 threads.
# Then 60 answers (greedy + 4 seeds per prompt) checked against their schemas.
# CPU: see machine.md beside the results (this run: AMD EPYC Zen 4, AVX-512 with bf16).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-qwen-json
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,target-int4-unforced,spec-int4-auto,spec-int4-auto-unforced,llamacpp \
  --dataset json-extract -n 256 --threads 2 --out $OUT "$@"
.venv/bin/python scripts/schema_validity.py --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --seeds 4 -n 256 --threads 2 | tee $OUT/validity.txt
