#!/usr/bin/env bash
# Issues 21, 22 and 24 on an AVX-512 CPU (AMD EPYC Zen 4, 2 cores, AVX-512 with bf16/VNNI), after
# the decoder layers of a pass moved into one C++ call (LayerStack) and the planner's multi-token
# pass costs are steered by the engine's own passes: the int4 Qwen2.5-Coder-1.5B target alone and
# on the GGUF file's own blocks, the 0.5B int4 draft model, auto (n-gram + suffix store + draft
# model; no draft head is trained on this machine) as chains and as trees, auto on the GGUF
# blocks, and llama.cpp on the same GGUF; greedy, 96 new tokens, 2 threads, every method
# interleaved prompt by prompt in one process: Spec-Bench (6 categories x 5 prompts), then
# HumanEval (10).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-zen4-qwen-stack
METHODS=target-int4,target-gguf,spec-int4-model-int4,spec-int4-auto,spec-int4-auto-tree,spec-gguf-auto,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
# The multi-turn coding conversations (code-chat: 5 conversations x 3 turns, 160 new tokens a turn,
# each turn resending the conversation, every method's prompt cache kept; llama.cpp's too).
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-ngram,spec-int4-ngram-tree,spec-int4-auto,spec-int4-auto-tree,spec-gguf-auto,llamacpp \
  --dataset code-chat --limit 5 -n 160 --threads 2 --out $OUT/code-chat "$@"
