#!/usr/bin/env bash
# Issue 24 on a real AVX2 CPU (AMD EPYC Zen 3, 2 cores, no AVX-512): the T(m) table
# (scripts/kernel_tm.py: the GGUF file's own blocks beside our int4, int8, bf16 and llama.cpp).
set -euo pipefail
cd "$(dirname "$0")/../../.."
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 9 --out docs/benchmarks/cpu-avx2-zen3-gguf
# After the whole decoder layer went into one C++ call (kernels/fused_layer.py): the same command.
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 9 --out docs/benchmarks/cpu-avx2-zen3-gguf/fused-layer
