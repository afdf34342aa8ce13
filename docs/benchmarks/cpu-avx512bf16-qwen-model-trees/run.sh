#!/usr/bin/env bash
# Token trees from the draft model (issue 21): the int4 0.5B draft model's chain vs its chain plus
# second choices on the verify rows the planner finds free, beside the int4 target alone, the
# auto drafter and llama.cpp, greedy, 96 tokens: HumanEval (10 prompts), then Spec-Bench (6 x 5).
# CPU: see the results' headers (this run: AMD EPYC Zen 4, AVX-512 with bf16).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-qwen-model-trees
METHODS=target-int4,spec-int4-model-int4,spec-int4-model-int4-tree,spec-int4-auto,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
# After the planner fix (a fully accepted tree's unused leaves are no rejection), the chains and
# trees of both drafters again, Spec-Bench:
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-model-int4,spec-int4-model-int4-tree,spec-int4-ngram,spec-int4-ngram-tree \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench-fixed "$@"
# Multi-turn coding (our code-chat tasks, 5 conversations x 3 turns, 160 new tokens a turn, each
# turn resending the conversation, the prefix cache on): chains vs trees of both drafters.
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-ngram,spec-int4-ngram-tree,spec-int4-model-int4,spec-int4-model-int4-tree,spec-int4-auto \
  --dataset code-chat --limit 5 -n 160 --threads 2 --out $OUT/code-chat "$@"
# After the draft-timing fix (a tree's draft timed by its main path's steps), the draft model's
# chain and tree again on code-chat:
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-model-int4,spec-int4-model-int4-tree \
  --dataset code-chat --limit 5 -n 160 --threads 2 --out $OUT/code-chat-fixed "$@"
