#!/usr/bin/env bash
# Issue 24 end to end on a real AVX2 CPU (AMD EPYC Zen 3, 2 cores, no AVX-512), after the AVX2 GGUF
# kernels stopped spilling (../cpu-avx2-zen3-gguf/spill-free: T1 44.7 ms against llama.cpp's 51.9):
# the GGUF as shipped (target-gguf) and its auto drafter beside the int4 target and its auto
# drafter, and llama.cpp on the same file; greedy, 96 new tokens, 2 threads, every method
# interleaved prompt by prompt in one process: Spec-Bench (6 categories x 5 prompts), then
# HumanEval (10). auto: n-gram + suffix + the 0.5B draft model (int4 / its GGUF) + the draft head.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx2-zen3-qwen-gguf-native
METHODS=target-int4,spec-int4-auto,target-gguf,spec-gguf-auto,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
