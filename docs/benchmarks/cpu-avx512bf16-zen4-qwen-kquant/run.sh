#!/usr/bin/env bash
# Spec-Bench and HumanEval on an AMD EPYC Zen 4 after the K-quant kernels take activations per
# super-block of 256: both targets alone, auto on each, llama.cpp, in one run per dataset. Every
# cost entry was measured in the run (the kernels' change gives the cost cache a new key).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-zen4-qwen-kquant
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,target-gguf,spec-int4-auto,spec-gguf-auto,llamacpp \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,target-gguf,spec-int4-auto,spec-gguf-auto,llamacpp \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
