#!/usr/bin/env bash
# Issue 24 on an AMD EPYC Zen 4 (AVX-512 with bf16/VNNI): the K-quant kernels take activations with
# one scale per row and super-block of 256 (as llama.cpp's Q8_K) instead of per block of 32. Before
# (commit 8fe6e59) and after, each in its own worktree, run in turns:
#   git worktree add /tmp/base 8fe6e59 && ln -s "$PWD/.venv" /tmp/base/.venv
# 1. one product in cache, AVX-512 and AVX2 paths, 1 thread (products.py; figures in docs/kernels.md)
# 2. the whole model's T(m) beside llama.cpp, five runs each, alternating (kernel_tm_ab.md)
# 3. closeness to the file's de-quantized bf16 model on Spec-Bench (quality-super/, quality-per32/)
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/benchmarks/cpu-avx512bf16-zen4-kquant-acts
BASE=${BASE:-/tmp/base}
for isa in 2 1; do
  .venv/bin/python $OUT/products.py 1 $isa
  (cd "$BASE" && PYTHONPATH="$BASE" .venv/bin/python "$OLDPWD/$OUT/products.py" 1 $isa)
done
for r in 1 2 3 4 5; do
  .venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 7 --max-m 8 --formats gguf --out /tmp/tm-super-$r
  (cd "$BASE" && PYTHONPATH="$BASE" .venv/bin/python scripts/kernel_tm.py qwen2.5-coder-1.5b --threads 2 --repeats 7 --max-m 8 --formats gguf --out /tmp/tm-per32-$r)
  cp /tmp/tm-super-$r/kernel_tm.json $OUT/kernel_tm_ab/super-$r.json
  cp /tmp/tm-per32-$r/kernel_tm.json $OUT/kernel_tm_ab/per32-$r.json
done
.venv/bin/python scripts/gguf_quality.py qwen2.5-coder-1.5b --per-category 5 --tokens 128 --formats gguf --threads 2 --out $OUT/quality-super
(cd "$BASE" && PYTHONPATH="$BASE" .venv/bin/python scripts/gguf_quality.py qwen2.5-coder-1.5b --per-category 5 --tokens 128 --formats gguf --no-llamacpp --threads 2 --out "$OLDPWD/$OUT/quality-per32")
