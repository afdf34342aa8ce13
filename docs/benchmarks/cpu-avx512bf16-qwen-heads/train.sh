#!/usr/bin/env bash
# The draft head these runs use: Qwen2.5-Coder-1.5B's own answers (int4 weights, greedy, up to 192
# tokens) to 738 prompts built from Python's standard library docstrings, then 4 epochs of
# training (unroll 2, AdamW lr 1e-3, 512 pairs a step). These are `specdecode heads train`'s
# defaults; written out so the run stays reproducible if they change. Resumable: run it again
# after an interruption. Then: scripts/head_step_cost.py for the head's step against T(1).
set -euo pipefail
cd "$(dirname "$0")/../../.."
.venv/bin/specdecode heads train --model qwen2.5-coder-1.5b --quantize int4 --num-prompts 738 -n 192 --epochs 4 "$@"
.venv/bin/python scripts/head_step_cost.py qwen2.5-coder-1.5b --quantize int4 --threads 2
