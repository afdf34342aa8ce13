#!/usr/bin/env bash
# Issues 22 and 21 re-measured on a real AVX2 CPU (AMD EPYC Zen 3, 2 cores, no AVX-512) after the
# AVX2 one-pass kernels (T(2) now 1.02-1.12 T(1), was 1.2-1.5) and the planner's catch-up rent rule:
# the int4 Qwen2.5-Coder-1.5B target alone, with the 0.5B int4 draft model, with the draft head
# trained in ../train.sh, auto (n-gram + suffix + draft model + head) as chains and as trees, and
# llama.cpp on the same GGUF; greedy, 96 new tokens, 2 threads, every method interleaved prompt by
# prompt in one process: Spec-Bench (6 categories x 5 prompts), then HumanEval (10).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
OUT=docs/benchmarks/cpu-avx2-zen3-qwen-heads/rebench
METHODS=target-int4,spec-int4-model-int4,spec-int4-head,spec-int4-auto,spec-int4-auto-tree,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
