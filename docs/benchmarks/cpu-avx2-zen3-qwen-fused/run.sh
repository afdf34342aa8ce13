#!/usr/bin/env bash
# The whole decoder layer in one C++ call (kernels/fused_layer.py) on a real AVX2 CPU (AMD EPYC
# Zen 3, 2 cores, no AVX-512): the int4 target alone, its best drafters (n-gram tree, the 0.5B
# draft model, auto), the GGUF as shipped with its auto drafter, and llama.cpp on the same file,
# greedy, 96 new tokens, 2 threads, every method interleaved prompt by prompt in one process:
# Spec-Bench (6 categories x 5 prompts), then HumanEval (10). The same prompts and settings as
# ../cpu-avx2-zen3-qwen/run.sh (before the fused layer).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx2-zen3-qwen-fused
METHODS=target-int4,spec-int4-ngram-tree,spec-int4-model-int4,spec-int4-auto,target-gguf,spec-gguf-auto,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
# After the cost entry's remeasure became short (remeasure_target: ~1 s instead of ~8 s mid-request;
# two auto requests above stalled for 8-9 s): auto beside the int4 target, the n-gram tree and llama.cpp.
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-ngram-tree,spec-int4-auto,llamacpp \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench-short-remeasure "$@"
# Multi-turn coding (our code-chat tasks: 5 conversations x 3 turns, 160 new tokens a turn, each
# turn resending the conversation, every method's prompt cache kept), the planner choosing k.
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-ngram-tree,spec-int4-auto,llamacpp \
  --dataset code-chat --limit 5 -n 160 --threads 2 --out $OUT/code-chat "$@"
