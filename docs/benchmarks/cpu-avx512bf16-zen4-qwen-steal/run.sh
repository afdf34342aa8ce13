#!/usr/bin/env bash
# Spec-Bench on an AMD EPYC Zen 4 after threads take each other's tiles at a product's end and
# the prefetch distance is measured per machine: the int4 target, auto on the int4 and the GGUF
# targets, llama.cpp. Run here after moving $SPECDECODE_CACHE/costs aside, so every cost entry
# was measured in the run, as a new user's are.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-zen4-qwen-steal
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-auto,spec-gguf-auto,llamacpp \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
# The GGUF target alone beside auto on it (its outputs' own reference) and llama.cpp again.
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-gguf,spec-gguf-auto,llamacpp \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench-gguf "$@"
# HumanEval (10 prompts), both targets alone and auto on each, llama.cpp.
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,target-gguf,spec-int4-auto,spec-gguf-auto,llamacpp \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
# Issue 21's tokens per pass, trees against chains: HumanEval and the multi-turn coding
# conversations (5 x 3 turns, 160 new tokens a turn, every method's prompt cache kept).
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-auto,spec-int4-auto-tree \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval-trees "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-auto,spec-int4-auto-tree \
  --dataset code-chat --limit 5 -n 160 --threads 2 --out $OUT/code-chat-trees "$@"
