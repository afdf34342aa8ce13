#!/usr/bin/env bash
# The head fine-tuned with self-written requests (run.sh's /tmp/s6/head_chat) in `specdecode bench`:
# Spec-Bench 6 x 5, 96 tokens, greedy, 2 threads, interleaved with the int4 target alone, auto
# (n-gram + suffix + draft model + this head) and llama.cpp. Compare with ../specbench (the head
# before, another run: compare each run's ratios to its own target-int4).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
D=docs/benchmarks/cpu-avx2-zen3-qwen-heads/self-written
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-head,spec-int4-auto,llamacpp --head /tmp/s6/head_chat \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $D/specbench "$@"
