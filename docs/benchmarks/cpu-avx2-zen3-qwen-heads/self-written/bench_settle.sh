#!/usr/bin/env bash
# bench.sh again after the cost model's re-timing moved between requests (Engine.settle): the
# same methods, prompts and head; a translation prompt (spec-bench/165) had stalled 1.2 s
# mid-stream in both earlier runs of the head and auto methods.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
D=docs/benchmarks/cpu-avx2-zen3-qwen-heads/self-written
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
  --methods target-int4,spec-int4-head,spec-int4-auto,llamacpp --head /tmp/s6/head_chat \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $D/specbench-settle "$@"
