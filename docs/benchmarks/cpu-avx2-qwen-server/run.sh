#!/bin/bash
# Issue 5 numbers: TTFT, per-request and total tok/s at 1/4/16 clients, target only vs speculative.
cd "$(dirname "$0")/../../.."  # the repository root
mkdir -p docs/benchmarks/cpu-avx2-qwen-server
for cfg in "none" "model"; do
  if [ $cfg = none ]; then extra=""; else extra="--draft qwen2.5-coder-0.5b --draft-quantize int8 -k 2"; fi
  .venv/bin/specdecode serve --model qwen2.5-coder-1.5b $extra --threads 2 --port 8011 --max-active 16 --max-queue 64 --log-level warning > /tmp/serve_$cfg.log 2>&1 &
  pid=$!
  for i in $(seq 1 120); do curl -s http://127.0.0.1:8011/health >/dev/null && break; sleep 1; done
  .venv/bin/python -m specdecode.server.loadtest --url http://127.0.0.1:8011 --concurrency 1,4,16 --requests 16 --max-tokens 16 --chat --prompt "Write a Python function that checks whether a number is prime." --warmup 1 --timeout 900 --json docs/benchmarks/cpu-avx2-qwen-server/loadtest-$cfg.json 2>&1 | tee docs/benchmarks/cpu-avx2-qwen-server/loadtest-$cfg.txt
  kill $pid; wait $pid 2>/dev/null
done
