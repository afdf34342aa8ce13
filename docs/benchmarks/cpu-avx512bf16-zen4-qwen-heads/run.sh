#!/usr/bin/env bash
# Issue 22 on an AMD EPYC Zen 4 (2 cores, AVX-512 with bf16 and VNNI): the head a user gets from
# `specdecode heads train` with every default (the docstring prompts plus 256 requests the target
# writes itself, 4 epochs, int4 target), trained from scratch on this CPU, then measured: its
# teacher-forced agreement on the benchmark prompts' answers (scripts/head_agreement.py), and
# `specdecode bench` with the int4 target alone, the 0.5B draft model, the head, auto (n-gram +
# suffix + draft model + head) and llama.cpp on the same GGUF; greedy, 96 new tokens, 2 threads,
# every method interleaved prompt by prompt in one process: Spec-Bench (6 categories x 5 prompts),
# then HumanEval (10). The same script as the Zen 3's (cpu-avx2-zen3-qwen-heads/default-corpus), the
# agreement also measured with the head's catch-up window (HeadDrafter(window=): 128 by default).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-zen4-qwen-heads
if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  /usr/bin/time -v .venv/bin/specdecode heads train --model qwen2.5-coder-1.5b 2>&1 | tee $OUT/train.log
fi
.venv/bin/python scripts/head_agreement.py qwen2.5-coder-1.5b --quantize int4 --threads 2 --sizes "" \
  --windows 32,64,128,256 > $OUT/agreement.json
METHODS=target-int4,spec-int4-model-int4,spec-int4-head,spec-int4-auto,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
# the head's draft step against the target's T(1) (run after the benches, the same hour)
.venv/bin/python scripts/head_step_cost.py qwen2.5-coder-1.5b --quantize int4 --threads 2 > $OUT/step_cost.json
