#!/usr/bin/env bash
# A quantized draft model's output layer in its body's format (loader.DRAFT_QUANT_HEAD: int4 for an
# int4 draft; before, int8 like a target's): the 0.5B int4 draft with its int4 head
# (spec-int4-model-int4, and inside spec-int4-auto) beside the same draft with the int8 head
# (spec-int4-model-int4-int8head), the int4 target alone and llama.cpp, in one run on the Zen 4;
# Spec-Bench 6 x 5, greedy, 96 new tokens, 2 threads.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-zen4-qwen-auto
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-model-int4-int8head,spec-int4-model-int4,spec-int4-auto,llamacpp \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/draft-int4-head "$@"
# The same two drafts at a fixed draft length (k = 2), so that the planner's choices (which follow
# pass times measured on this noisy VM) are out of the comparison: only the step's cost differs.
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-model-int4-int8head,spec-int4-model-int4 \
  --dataset spec-bench --limit 5 -n 96 --threads 2 -k 2 --out $OUT/draft-int4-head-k2 "$@"
# After the change (the int4 head in every draft-model method), under the planner: the int4 target,
# the draft model, auto and llama.cpp, as in run.sh.
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-model-int4,spec-int4-auto,llamacpp \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/after-draft-head "$@"
