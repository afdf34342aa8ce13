#!/usr/bin/env bash
# Issue 24's quality table on a real AVX2 CPU (AMD EPYC Zen 3, 2 cores): Spec-Bench 6 x 5 prompts,
# 128 greedy tokens, each way of running the Q4_K_M file against the file de-quantized to bf16
# (the reference: PyTorch's bf16 kernels on this CPU). The integer formats' outputs are the same
# bits on every ISA path; the reference and llama.cpp are this machine's own.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
.venv/bin/python scripts/gguf_quality.py qwen2.5-coder-1.5b --per-category 5 --tokens 128 \
  --out docs/benchmarks/cpu-avx2-zen3-gguf/quality "$@"
