#!/bin/bash
# Issue 10 numbers: continuous batching under load. TTFT, per-request and total tok/s at 1/4/16/32
# clients, 128 tokens each, 8 distinct prompts (every answer checked against the first one for its
# prompt: "mixed"), target alone and with speculation. Run on a quiet machine (2 threads, 2 cores).
# Usage: run.sh [config ...]   configs: target auto model int4-target int4-model (default: target auto model)
# target = the target alone (--drafter none); auto = the default drafter (n-gram, the policy decides);
# model = auto with the 0.5B draft model too.
cd "$(dirname "$0")/../../.."  # the repository root
out=docs/benchmarks/cpu-avx512bf16-qwen-server
mkdir -p $out
for cfg in ${@:-target auto model}; do
  case $cfg in
    target) extra="--drafter none" ;;
    auto) extra="" ;;
    model) extra="--draft qwen2.5-coder-0.5b" ;;
    int4-target) extra="--quantize int4 --drafter none" ;;
    int4-model) extra="--quantize int4 --draft qwen2.5-coder-0.5b --draft-quantize int4" ;;
  esac
  .venv/bin/specdecode serve --model qwen2.5-coder-1.5b $extra --threads 2 --port 8011 --log-level warning > /tmp/serve_$cfg.log 2>&1 &
  pid=$!
  for i in $(seq 1 300); do curl -s http://127.0.0.1:8011/health >/dev/null && break; sleep 1; done
  { echo "# specdecode serve --model qwen2.5-coder-1.5b $extra --threads 2 (defaults: --max-batch 32)"; \
    .venv/bin/python -m specdecode.server.loadtest --url http://127.0.0.1:8011 --concurrency ${LEVELS:-1,4,16,32} \
      --max-tokens 128 --chat --warmup 1 --timeout 900 --json $out/loadtest-$cfg.json 2>&1; } | tee $out/loadtest-$cfg.txt
  curl -s http://127.0.0.1:8011/metrics | grep -E "^specdecode_(batch_size|tokens_per_pass)_(sum|count)|kv_cache" >> $out/loadtest-$cfg.txt
  kill $pid; wait $pid 2>/dev/null
done
