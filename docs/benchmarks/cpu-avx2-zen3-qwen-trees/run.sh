#!/usr/bin/env bash
# Issue 21 on a real AVX2 CPU (AMD EPYC Zen 3, 2 cores, no AVX-512), after the AVX2 kernels took
# three and four rows in one pass (docs/kernels.md): chains against token trees, for prompt lookup
# alone (spec-int4-ngram / -tree) and for the auto drafter (n-gram + suffix store + the int4 0.5B
# draft model + the draft head; spec-int4-auto / -auto-tree: every drafter drafting trees, the
# suffix drafter its stored alternatives), beside the int4 target alone and llama.cpp on the GGUF,
# all interleaved prompt by prompt in one process, greedy: HumanEval (10, 96 tokens), Spec-Bench
# (6 categories x 5, 96 tokens), then the multi-turn coding chats (5 conversations x 3 turns, 160
# tokens a turn, each turn resending the conversation with the prefix cache on).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx2-zen3-qwen-trees
METHODS=target-int4,spec-int4-ngram,spec-int4-ngram-tree,spec-int4-auto,spec-int4-auto-tree,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset code-chat --limit 5 -n 160 --threads 2 --out $OUT/code-chat "$@"
# After the draft model's catch-up became a classic ski rental (bought once what the request forwent
# without the draft reaches its price; docs/policy.md): the short-answer categories and two long
# ones, then the multi-turn chats.
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-auto,llamacpp --dataset spec-bench --categories mt_bench,translation,qa,math_reasoning \
  --limit 5 -n 96 --threads 2 --out $OUT/specbench-rent "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-ngram,spec-int4-auto --dataset code-chat --limit 5 -n 160 --threads 2 \
  --out $OUT/code-chat-rent "$@"
