#!/usr/bin/env bash
# Spec-Bench again on the same Zen 4 after the cost model's self-disagreeing entries are timed
# again at the engine's first settle (commit d2c6bfb): the int4 and GGUF targets, the draft model
# alone, auto on both, llama.cpp. Run here after moving $SPECDECODE_CACHE/costs aside, so every
# cost entry was measured in the run, as a new user's are.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-zen4-qwen-stack
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,target-gguf,spec-int4-model-int4,spec-int4-auto,spec-gguf-auto,llamacpp \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench-recheck "$@"
