#!/usr/bin/env bash
# One-command setup: the CPU build of torch first (a bare `torch` would pull a multi-GB CUDA
# build), then the package with its dev tools in editable mode.
set -euo pipefail
PY=${PYTHON:-python}
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install "torch==2.13.0"
fi
"$PY" -m pip install -e ".[dev]"
