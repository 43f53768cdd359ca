#!/usr/bin/env bash
# One-command development setup: torch==2.13.0 first (when torch is absent), then the package with
# its dev tools in editable mode.
#   GPU (CUDA) machines:  bash install.sh        (PyPI's Linux torch wheel is the CUDA build)
#   CPU-only machines:    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash install.sh
set -euo pipefail
PY=${PYTHON:-python}
if ! "$PY" -c "import torch" 2>/dev/null; then
    if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
        "$PY" -m pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
    else
        "$PY" -m pip install "torch==2.13.0"
    fi
fi
"$PY" -m pip install -e ".[dev]"
