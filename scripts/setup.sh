#!/usr/bin/env bash
# Create .venv with everything specdecode, its tests, server and benchmark need (CPU PyTorch).
# Idempotent: a second run only checks what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Pin torch first: an unpinned torch would pull a multi-GB CUDA build; 2.13.0 is the CPU wheel.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e ".[server,bench,test]"
echo "setup done: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
