#!/usr/bin/env bash
# Issue 20's benchmarks, run alone on the machine, 2 threads, greedy:
# 1. conversations: our code-chat tasks (5 x 3 turns) and 5 MT-bench 2-turn questions, 160 new
#    tokens a turn, int4 target with its lossless drafters beside llama.cpp with its prompt cache;
# 2. long contexts: prefill and decode at 16k tokens of context, beside llama.cpp.
# CPU: see conversations.md (this run: AMD EPYC, AVX2 only).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx2-qwen-conversations
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-ngram,spec-int4-auto,llamacpp \
  --dataset code-chat,mt-bench-2turn --limit 5 -n 160 --threads 2 --out $OUT "$@"
.venv/bin/python scripts/long_context.py qwen2.5-coder-1.5b --quantize int4 --contexts 16384 --decode 32 \
  --threads 2 | tee $OUT/long_context.md
