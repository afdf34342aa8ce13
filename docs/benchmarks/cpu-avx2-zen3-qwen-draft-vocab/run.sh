#!/usr/bin/env bash
# The draft model scoring the first 65,536 ids of the vocabulary (the default, drafters/draft_vocab.py)
# against every id (spec-int4-model-int4-allvocab), on a real AVX2 CPU (AMD EPYC Zen 3, 2 cores):
# int4 Qwen2.5-Coder-1.5B target, int4 0.5B draft, the planner choosing k; the target alone, auto
# (n-gram + suffix + draft model + head) and llama.cpp in the same run; greedy, 96 new tokens,
# every method interleaved prompt by prompt: HumanEval (10), then Spec-Bench (6 categories x 5).
# Then the draft step's cost with and without the cut, and the share of the target's tokens kept.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx2-zen3-qwen-draft-vocab
METHODS=target-int4,spec-int4-model-int4,spec-int4-model-int4-allvocab,spec-int4-auto,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/python scripts/draft_vocab_cost.py qwen2.5-coder-1.5b qwen2.5-coder-0.5b --threads 2 --rows 32768,65536 \
  --coverage $OUT/specbench/results.json > $OUT/draft_step_cost.json
# Longer answers, where the planner buys the draft model's catch-up over the prompt: 256 new tokens,
# the three categories of new text, 3 prompts each.
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-model-int4,spec-int4-model-int4-allvocab \
  --dataset spec-bench --categories mt_bench,translation,qa --limit 3 -n 256 --threads 2 --out $OUT/specbench-256 "$@"
# Multi-turn coding (5 conversations x 3 turns, 160 tokens a turn, prompt caches kept): the draft
# model's rows of the conversation so far come from the prefix cache, so its catch-up is cheap.
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-model-int4,spec-int4-model-int4-allvocab \
  --dataset code-chat --limit 5 -n 160 --threads 2 --out $OUT/code-chat "$@"
# auto (n-gram + suffix + the cut draft model + head) on the same conversations, llama.cpp beside it.
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-auto,llamacpp \
  --dataset code-chat --limit 5 -n 160 --threads 2 --out $OUT/code-chat-auto "$@"
# code-chat-repeat/ (at 65,536 ids, commit 277f286) and code-chat-98k/ (at the 98,304 default, commit
# 01d30d4) are the code-chat command above run again with --out changed; draft_step_cost_98k.json is
# scripts/draft_vocab_cost.py with --rows 65536,98304 --repeats 60.
