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
# Compile the CPU kernels now (about 30 s, once per torch version) rather than on first use.
.venv/bin/python -c "import specdecode.kernels as k; print('CPU kernels:', k.ISA_NAMES[k.active_isa()] if k.active_isa() >= 0 else 'not built (plain PyTorch)')"
echo "setup done: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
