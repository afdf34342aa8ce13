#!/usr/bin/env bash
# GGUF as shipped (issue 24): the T(m) table (scripts/kernel_tm.py: --quantize gguf beside our int4,
# int8, bf16 and llama.cpp), the closeness of each to the file's own model (scripts/gguf_quality.py),
# and `specdecode bench` with the GGUF-native target and its drafters beside the int4 ones and
# llama.cpp, greedy, 96 tokens: Spec-Bench (6 categories x 5), then HumanEval (10 prompts).
# CPU: see the files' headers. The AVX2 rows: the same commands under
# ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 SPECDECODE_KERNEL_ISA=avx2 (emulated_avx2/).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512-xeon-gguf
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 5 --out $OUT
.venv/bin/python scripts/gguf_quality.py qwen2.5-coder-1.5b --per-category 5 --tokens 128 --out $OUT
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 SPECDECODE_KERNEL_ISA=avx2 \
  .venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 5 --formats gguf,int4,int8 \
  --out $OUT/emulated_avx2
METHODS=target-int4,target-gguf,spec-int4-auto,spec-gguf-model-gguf,spec-gguf-auto,llamacpp
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset spec-bench --limit 5 -n 96 --threads 2 --out $OUT/specbench "$@"
.venv/bin/specdecode bench --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --methods $METHODS \
  --dataset humaneval --limit 10 -n 96 --threads 2 --out $OUT/humaneval "$@"
