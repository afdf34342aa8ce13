#!/usr/bin/env bash
# Issue 24 on a real AVX2 CPU (AMD EPYC Zen 3, 2 cores, no AVX-512): the T(m) table
# (scripts/kernel_tm.py: the GGUF file's own blocks beside our int4, int8, bf16 and llama.cpp).
set -euo pipefail
cd "$(dirname "$0")/../../.."
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 9 --out docs/benchmarks/cpu-avx2-zen3-gguf
# After the whole decoder layer went into one C++ call (kernels/fused_layer.py): the same command.
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 9 --out docs/benchmarks/cpu-avx2-zen3-gguf/fused-layer
# After the AVX2 kernels stopped spilling (SKINNY_KEEP, register-pair unpacking, spread prefetches);
# kernel_tm.py now times every row in turns, llama.cpp included.
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 7 --out docs/benchmarks/cpu-avx2-zen3-gguf/spill-free
# After int4's int16 block sums; then again with the session's last kernels (Q5_0 too).
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --formats gguf,int4 --threads 2 --repeats 9 --max-m 8 \
  --out docs/benchmarks/cpu-avx2-zen3-gguf/int4-int16-sums
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --formats gguf,int4 --threads 2 --repeats 9 --max-m 8 \
  --out docs/benchmarks/cpu-avx2-zen3-gguf/final
# After three and four rows took one pass over a tile's two halves: both orders timed in turns
# (the AVX2 kernels' run-time one-pass row limit: 2 is the old order).
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --formats gguf,int4 --threads 2 --repeats 25 --max-m 4 \
  --one-pass-rows 2,4 --no-llamacpp --out docs/benchmarks/cpu-avx2-zen3-gguf/one-pass
# Then the usual table with llama.cpp (the one-pass order in use):
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --formats gguf,int4 --threads 2 --repeats 9 --max-m 8 \
  --out docs/benchmarks/cpu-avx2-zen3-gguf/one-pass-final
