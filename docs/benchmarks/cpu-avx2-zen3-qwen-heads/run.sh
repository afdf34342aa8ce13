#!/usr/bin/env bash
# Issues 22 and 21 on a real AVX2 CPU (AMD EPYC Zen 3, 2 cores, no AVX-512): the int4
# Qwen2.5-Coder-1.5B target alone, with the 0.5B int4 draft model, with the draft head trained here
# (train.sh), the head drafting trees (its second choices where the planner grants free rows), auto
# (n-gram + suffix + draft model + head; chains), auto with every drafter drafting trees, and
# llama.cpp on the same GGUF; greedy, 96 new tokens, 2 threads, every method interleaved prompt by
# prompt in one process: Spec-Bench (6 categories x 5 prompts), then HumanEval (10), then the
# multi-turn coding conversations (5 x 3 turns, 160 tokens a turn, prompt caches kept).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx2-zen3-qwen-heads
METHODS=target-int4,spec-int4-model-int4,spec-int4-head,spec-int4-head-tree,spec-int4-auto,spec-int4-auto-tree,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-auto,spec-int4-auto-tree,llamacpp \
  --dataset code-chat --limit 5 -n 160 --threads 2 --out $OUT/code-chat "$@"
