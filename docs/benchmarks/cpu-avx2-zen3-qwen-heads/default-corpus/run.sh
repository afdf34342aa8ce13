#!/usr/bin/env bash
# Issue 22: the head a user gets from `specdecode heads train` with every default (the docstring
# prompts plus 256 requests the target writes itself, 4 epochs, int4 target), trained from scratch
# on a real AVX2 CPU (AMD EPYC Zen 3, 2 cores, no AVX-512), then measured: its teacher-forced
# agreement on the benchmark prompts' answers (scripts/head_agreement.py), and `specdecode bench`
# with the int4 target alone, the 0.5B draft model, the head, auto (n-gram + suffix + draft model +
# head) and llama.cpp on the same GGUF; greedy, 96 new tokens, 2 threads, every method interleaved
# prompt by prompt in one process: Spec-Bench (6 categories x 5 prompts), then HumanEval (10).
# Training took about an hour here (train.log); the bench about half an hour.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
OUT=docs/benchmarks/cpu-avx2-zen3-qwen-heads/default-corpus
if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  /usr/bin/time -v .venv/bin/specdecode heads train --model qwen2.5-coder-1.5b 2>&1 | tee $OUT/train.log
fi
.venv/bin/python scripts/head_agreement.py qwen2.5-coder-1.5b --quantize int4 --threads 2 --sizes "" > $OUT/agreement.json
METHODS=target-int4,spec-int4-model-int4,spec-int4-head,spec-int4-auto,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
