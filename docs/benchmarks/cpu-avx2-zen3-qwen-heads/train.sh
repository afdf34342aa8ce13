#!/usr/bin/env bash
# The draft head trained on a real AVX2 CPU (AMD EPYC Zen 3, 2 cores, no AVX-512): the same
# command and defaults as ../cpu-avx512bf16-qwen-heads/train.sh (Qwen2.5-Coder-1.5B's own answers,
# int4 weights, greedy, up to 192 tokens, to 738 prompts built from Python's standard library
# docstrings; 4 epochs, unroll 2, AdamW lr 1e-3, 512 pairs a step). Resumable: run it again after an
# interruption. Then the head's step against the target's T(1).
set -euo pipefail
cd "$(dirname "$0")/../../.."
.venv/bin/specdecode heads train --model qwen2.5-coder-1.5b --quantize int4 --num-prompts 738 -n 192 --epochs 4 "$@"
.venv/bin/python scripts/head_step_cost.py qwen2.5-coder-1.5b --quantize int4 --threads 2
