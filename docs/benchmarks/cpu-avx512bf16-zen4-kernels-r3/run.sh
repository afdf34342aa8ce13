#!/usr/bin/env bash
# Issue 24 on an AMD EPYC Zen 4 (AVX-512 with bf16/VNNI), after the decoder layers of a pass moved
# into one C++ call (LayerStack) and linear()'s temporaries into scratch buffers: the T(m) table
# (scripts/kernel_tm.py: the GGUF file's own blocks beside our int4, int8, bf16 and llama.cpp, every
# row timed in turns) on the AVX-512 path, then the same limited to AVX2 (emulated: PyTorch and our
# kernels round and dispatch as on an AVX2 CPU; the memory system is this one's, and llama.cpp
# keeps its AVX-512 build).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-zen4-kernels-r3
.venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 9 --out $OUT
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 SPECDECODE_KERNEL_ISA=avx2 \
  .venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 9 --formats gguf,int4,int8 \
  --out $OUT/emulated_avx2
