#!/usr/bin/env bash
# Issue 24 on an AMD EPYC Zen 4 (AVX-512 with bf16/VNNI) after threads take each other's tiles at
# a product's end and the prefetch distance is measured per machine: the two schedules side by
# side in one process (scripts/schedule_ab.py), then the T(m) table (scripts/kernel_tm.py: the GGUF
# file's own blocks beside our int4 and llama.cpp, every row timed in turns).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-zen4-kernels-r4
.venv/bin/python scripts/schedule_ab.py qwen2.5-coder-1.5b --quantize gguf --repeats 30 --out $OUT
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 9 --formats gguf,int4 --out $OUT
